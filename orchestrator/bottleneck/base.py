"""The Datapath interface. Each datapath says what it supports; an unsupported pair is an
error before the run starts, never a silent fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from policies.base import Policy


class Datapath:
    name: ClassVar[str] = ""

    def __init__(self, testbed: Testbed, seed: int | None = None) -> None:
        self.testbed = testbed
        self.seed = seed  # the run's: coin tosses, exploration noise

    def unsupported(self, policy: Policy) -> str | None:
        """Why this datapath cannot run the policy here, or None if it can."""
        if self.name not in policy.datapaths:
            return f"policy {policy.name!r} does not run on the {self.name!r} datapath " \
                   f"(it runs on: {', '.join(policy.datapaths)})"
        return None

    def elsewhere(self, policy: Policy) -> str:
        """Where else the policy runs, as advice: only datapaths that can run it."""
        others = [d for d in policy.datapaths if d != self.name]
        if not others:
            return f"no other datapath runs {policy.name!r}"
        return f"use --datapath {' or '.join(others)} (the datapaths that run {policy.name!r})"

    def check(self, policy: Policy) -> None:
        why = self.unsupported(policy)
        if why:
            raise UserError(why)

    def start(self, policy: Policy, run_dir: Path) -> None:
        """Deploy the policy on the bottleneck and start telemetry into run_dir/telemetry."""
        raise NotImplementedError

    def begin(self, t0_epoch: float) -> None:
        """The flows are released at t0_epoch (a dynamic link's schedule counts from it).
        Datapaths that apply a schedule read it from the file the run writes; nothing to do
        here by default."""

    def stop(self) -> dict[str, Any]:
        """Stop, restore the testbed's baseline link, return counters for the manifest
        (e.g. updates, missed_deadlines, packets_logged, sample_rate)."""
        raise NotImplementedError

    @classmethod
    def clean(cls, testbed: Testbed) -> None:
        """Remove whatever this datapath may have left on the testbed (idempotent)."""
