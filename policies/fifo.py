"""FIFO with tail drop: the baseline every AQM is compared with.

The policy never drops or marks; packets are lost only when the buffer is full, which the
datapath enforces with the limit below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import Decision, Params, Policy, QueueConfig, QueueState, require


@dataclass
class FifoParams(Params):
    limit: int | None = field(default=None, metadata={
        "help": "queue limit in packets (default: the testbed's buffer)"})

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit > 0, "limit", "a positive packet count", self.limit)


class Fifo(Policy):
    """Tail drop: enqueue every packet until the buffer is full."""

    name = "fifo"
    datapaths = ("nfqueue", "ebpf", "kernel", "dummynet")
    Params = FifoParams
    params: FifoParams

    def queue_config(self) -> QueueConfig:
        return QueueConfig(limit_pkts=self.params.limit)

    def update(self, state: QueueState) -> Decision:
        return Decision()
