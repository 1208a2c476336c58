"""Constant probabilities: a calibration policy.

Every update it asks for the same per-class drop and mark probabilities, whatever the queue
does. A datapath that is told p_mark = 0.2 must then CE-mark a fifth of the packets it
carries (`tests/test_claims.py` checks that on the wire); a datapath that squares, halves or
delays the probability shows at once. `min_backlog_bytes` defaults to 0 so the coin is tossed
on every packet, also on an uncongested link (the datapaths' own default is Linux's 2 MTU,
below which an AQM never acts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import ClassDecision, Decision, Params, Policy, QueueConfig, QueueState, require


@dataclass
class ConstantParams(Params):
    l4s_p_mark: float = field(default=0.0, metadata={"help": "L queue: CE-mark probability"})
    l4s_p_drop: float = field(default=0.0, metadata={"help": "L queue: drop probability"})
    classic_p_mark: float = field(default=0.0, metadata={"help": "C queue: CE-mark probability"})
    classic_p_drop: float = field(default=0.0, metadata={"help": "C queue: drop probability"})
    min_backlog_bytes: int = field(default=0, metadata={
        "help": "no drop or mark while less than this is queued (Linux AQMs: 2 MTU)"})

    def __post_init__(self) -> None:
        for cls in ("l4s", "classic"):
            mark, drop = getattr(self, f"{cls}_p_mark"), getattr(self, f"{cls}_p_drop")
            for key, value in ((f"{cls}_p_mark", mark), (f"{cls}_p_drop", drop)):
                require(0.0 <= value <= 1.0, key, "a probability in [0, 1]", value)
            require(mark + drop <= 1.0, f"{cls}_p_mark", f"p_mark + p_drop <= 1 (p_drop {drop})", mark)
        require(self.min_backlog_bytes >= 0, "min_backlog_bytes", "0 or more bytes", self.min_backlog_bytes)


class Constant(Policy):
    """The same drop/mark probabilities every update (calibration of a datapath)."""

    name = "constant"
    datapaths = ("nfqueue", "ebpf")  # no kernel qdisc applies a fixed probability
    Params = ConstantParams
    params: ConstantParams

    def queue_config(self) -> QueueConfig:
        # always the two queues: in one FIFO nfqueue still picks a packet's probabilities by
        # its codepoint and ebpf takes the classic ones, so the per-class parameters would mean
        # different things on the two datapaths
        return QueueConfig(dualq=True, min_backlog_bytes=self.params.min_backlog_bytes)

    def update(self, state: QueueState) -> Decision:
        p = self.params
        return Decision(l4s=ClassDecision(p_drop=p.l4s_p_drop, p_mark=p.l4s_p_mark),
                        classic=ClassDecision(p_drop=p.classic_p_drop, p_mark=p.classic_p_mark))
