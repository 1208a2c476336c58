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

from orchestrator.spec.prague import (  # noqa: F401 - re-exported: the options' one home is spec
    AI_IN_CWR,
    BITS,
    CLASSIC_ECN_DETECTION,
    DEFAULT_BITS,
    DIGITS,
    LOW_CWND,
    PACING,
    RTT_INDEPENDENCE,
    PragueOptions,
)


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


def is_testbed_cc(name: str, testbed_name: str) -> bool:
    """True if `name` is one of the congestion controls this testbed registers (any variant),
    so teardown never unregisters another testbed's or anyone else's."""
    return any(name == cc_name(testbed_name, bits) for bits in range(len(DIGITS)))


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
