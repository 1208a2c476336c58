"""The `prague:` options of an l4s flow (scenario YAML): which of TCP Prague's behaviours the
L4S sender's BPF congestion control applies. The schema lives with the scenario; what each
option does and how a variant is named is orchestrator/workloads/prague.py."""

from __future__ import annotations

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
