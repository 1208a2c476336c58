"""TCP Prague's differences from DCTCP that the BPF congestion control can do, as flow options.

A flow of kind l4s may say which of them its sender applies (scenario YAML):

    - {name: l4s, kind: l4s, src: s1, dst: rx, prague: {rtt_independence: true, pacing: true}}

Each option is a bit of the `PRAGUE` build parameter of bpf/scalable_cc.bpf.c (its header
says what each does and where it follows net/ipv4/tcp_prague.c). Each combination is its own
congestion control, registered under its own name: `l4s_<testbed>` for the default (pacing
only: the sender as it was before these options), `l4s<bits>_<testbed>` for the others, so
that the name the sender reads back from its socket (TCP_CONGESTION) says which variant ran;
`variant()` decodes it for the flow's results.

Not done, and why: windows below one segment (Prague's successors set a pacing rate below one
segment per RTT; a BPF CC's pacing rate is overwritten by tcp_update_pacing_rate() after
cong_avoid, and replacing cong_avoid by cong_control means re-implementing PRR). Classic ECN
bottleneck detection is a simplified form of Prague's: tcp_prague.c's scores log-scaled RTT
variation and queue depth from tcp_sock fields its own kernel adds (`srtt_pace_us`,
`classic_ecn`); ours scores the standing queue (srtt - min_rtt against 2 ms) per marked round.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

RTT_INDEPENDENCE, PACING, LOW_CWND, CLASSIC_ECN_DETECTION, AI_IN_CWR = 0x1, 0x2, 0x4, 0x8, 0x10
BITS = {"rtt_independence": RTT_INDEPENDENCE, "pacing": PACING, "low_cwnd": LOW_CWND,
        "classic_ecn_detection": CLASSIC_ECN_DETECTION, "ai_in_cwr": AI_IN_CWR}
DIGITS = "0123456789abcdefghijklmnopqrstuv"  # the variant in one character of the CC's name
DEFAULT_BITS = PACING


class PragueOptions(BaseModel):
    """Which of TCP Prague's behaviours the L4S sender's BPF congestion control applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # additive increase scaled to a 25 ms reference RTT after 500 post-slow-start rounds, alpha
    # updated and CE reductions at most once per 25 ms (Prague's RTT_CONTROL_RATE)
    rtt_independence: bool = False
    # the kernel's internal pacing at 200%/100% of cwnd/srtt (Prague's rates); false: ACK-clocked
    pacing: bool = True
    # windows down to one segment instead of two
    low_cwnd: bool = False
    # back off as a classic flow on CE when the RTT shows the standing queue of a classic ECN
    # AQM (a simplified prague_classic_ecn_detection(), see bpf/scalable_cc.bpf.c)
    classic_ecn_detection: bool = False
    # keep growing while in CWR, as Prague does on every unmarked ACK (into ssthresh, which
    # cwnd reaches when CWR ends; see bpf/scalable_cc.bpf.c)
    ai_in_cwr: bool = False

    @property
    def bits(self) -> int:
        return sum(bit for key, bit in BITS.items() if getattr(self, key))


def bits_of(options: PragueOptions | dict[str, Any] | None) -> int:
    if options is None:
        return DEFAULT_BITS
    if isinstance(options, dict):
        options = PragueOptions.model_validate(options)
    return options.bits


def cc_name(testbed_name: str, bits: int = DEFAULT_BITS, name_max: int = 15) -> str:
    """The congestion control's name for this testbed and variant (TCP_CA_NAME_MAX - 1 chars;
    testbed names have at most 10, so 'l4s' + one base-32 digit + '_' always fits)."""
    if bits == DEFAULT_BITS:
        return f"l4s_{testbed_name}"[:name_max]
    return f"l4s{DIGITS[bits]}_{testbed_name}"[:name_max]


def variant(cc: str | None) -> dict[str, Any]:
    """What ran, from the congestion control's name as read from the socket."""
    if not cc:
        return {"cc": cc, "kind": None}
    if cc == "prague":
        return {"cc": cc, "kind": "prague", "note": "the kernel's TCP Prague (its own module parameters)"}
    if cc.startswith("l4s"):
        head = cc[3:].split("_", 1)[0]
        try:
            bits = int(head, 32) if head else DEFAULT_BITS
        except ValueError:
            return {"cc": cc, "kind": "unknown"}
        return {"cc": cc, "kind": "scalable", **{key: bool(bits & bit) for key, bit in BITS.items()}}
    return {"cc": cc, "kind": "other"}
