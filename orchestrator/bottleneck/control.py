"""The control loop: runs a policy every tupdate and logs one row per update.

Every datapath shares it. The datapath supplies a `QueueState` without history (it only knows
the present); the loop keeps the per-class history in its own ring buffers, times the policy,
and enforces the deadline: a decision that took longer than `deadline_s` is thrown away and the
previous one stays in force (the datapath keeps applying what it has), so a slow policy (an
LLM on a CPU) degrades to a slower update rate instead of stalling the link. Each update is
one Parquet row (columns in the results layout): the ground truth of the experience pool.

Time: `t` in rows is epoch seconds (time.time()), the project's one clock. The state's own
`t` (seconds since the datapath started) is logged as `t_rel` so the two do not collide.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.base import CLASSES, HISTORY_LEN, Decision, Policy, QueueState
from policies.telemetry import PartWriter

log = logging.getLogger(__name__)

RewardFn = Callable[[QueueState, Decision], float]


class ControlLoop:
    """Runs `policy.update` every `tupdate_s`, keeps the last decision on a miss or error."""

    def __init__(self, policy: Policy, tupdate_s: float, log_dir: Path | None,
                 deadline_s: float | None = None, history_len: int = HISTORY_LEN,
                 reward_fn: RewardFn | None = None, flush_s: float = 1.0) -> None:
        if tupdate_s <= 0:
            raise ValueError(f"tupdate_s must be positive, got {tupdate_s}")
        self.policy = policy
        self.tupdate_s = tupdate_s
        self.deadline_s = tupdate_s if deadline_s is None else deadline_s
        self.reward_fn = reward_fn
        self.decision = Decision()  # in force until the first update succeeds
        self.updates = self.missed = self.errors = 0
        self.late_wakeups = self.skipped_ticks = 0
        self.last_error = ""
        self.decide_us = array("d")
        self._sojourn = {c: deque(maxlen=history_len) for c in CLASSES}
        self._rate = {c: deque(maxlen=history_len) for c in CLASSES}
        self.writer = PartWriter(log_dir, flush_rows=10_000, flush_s=flush_s) if log_dir else None
        # a policy may prepare what only the process running its control loop needs (the
        # AQM-LLM's decision worker); the process that only checks a run never calls it
        getattr(policy, "start", _nothing)()
        self._policy_stats: dict[str, Any] = {}

    # ---- one update
    def step(self, state: QueueState, now: float) -> Decision:
        """One update at epoch time `now`: returns the decision the datapath must apply."""
        state = self._with_history(state)
        error = ""
        t0 = time.perf_counter()
        try:
            fresh = self.policy.update(state)
            if not isinstance(fresh, Decision):
                raise TypeError(f"update() returned {type(fresh).__name__}, not Decision")
        except Exception as exc:  # a broken policy must not take the link down
            fresh, error = None, f"{type(exc).__name__}: {exc}"
        took = time.perf_counter() - t0
        # a policy that decides elsewhere (policies/aqm_llm/worker.py) returns at its deadline
        # with the decision in force and says it was late
        missed = fresh is not None and (took > self.deadline_s or getattr(self.policy, "late", False) is True)
        self._account(took, missed, error)
        if fresh is not None and not missed:
            self.decision = fresh
        self._log(now, state, took, missed, error)
        return self.decision

    def _with_history(self, state: QueueState) -> QueueState:
        for cls in CLASSES:
            self._sojourn[cls].append(state.of(cls).sojourn_ms)
            self._rate[cls].append(state.of(cls).arrival_bps)
        return dataclasses.replace(
            state,
            sojourn_history={c: tuple(self._sojourn[c]) for c in CLASSES},
            rate_history={c: tuple(self._rate[c]) for c in CLASSES})

    def _account(self, took: float, missed: bool, error: str) -> None:
        self.updates += 1
        self.decide_us.append(took * 1e6)
        self.missed += missed
        if error:
            self.errors += 1
            if error != self.last_error:  # once per distinct error, not 60 times a second
                log.warning("policy %s failed, keeping the previous decision: %s",
                            self.policy.name, error)
            self.last_error = error

    def _log(self, now: float, state: QueueState, took: float, missed: bool, error: str) -> None:
        if self.writer is None:
            return
        row: dict[str, Any] = {"t": now}
        for key, value in state.flat().items():
            row["t_rel" if key == "t" else key] = value
        row.update(self.decision.flat())
        extra = getattr(self.policy, "log_extra", None)  # e.g. Explore's explore flag
        if callable(extra):
            row.update(extra())
        row.update(decide_us=took * 1e6, missed=missed, error=error, reward=self._reward(state))
        self.writer.add(row)

    def _reward(self, state: QueueState) -> float:
        if self.reward_fn is None:
            return math.nan
        try:
            return float(self.reward_fn(state, self.decision))
        except Exception as exc:  # the reward is for the log; it must not stop control
            log.warning("reward_fn failed: %s", exc)
            return math.nan

    # ---- the timer loop
    def run(self, read_state: Callable[[float], QueueState],
            apply: Callable[[Decision], None], stop: threading.Event) -> None:
        """Every tupdate until `stop` is set: read the state, step, apply.

        Deadlines are absolute (start + k * tupdate on the monotonic clock), so a slow tick
        never shifts the later ones. A wakeup later than a fifth of tupdate counts as late;
        ticks that passed entirely while we were late are skipped (counted), not replayed
        in a burst, because a burst of updates on the same queue state means nothing.
        """
        start = time.monotonic()
        k = 1
        while not stop.is_set():
            deadline = start + k * self.tupdate_s
            if stop.wait(max(0.0, deadline - time.monotonic())):
                break
            late = time.monotonic() - deadline
            if late > 0.2 * self.tupdate_s:
                self.late_wakeups += 1
            behind = int(late // self.tupdate_s)
            self.skipped_ticks += max(0, behind)
            k += 1 + max(0, behind)
            now = time.time()
            decision = self.step(read_state(now), now)
            apply(decision)

    # ---- reporting
    def stats(self) -> dict[str, Any]:
        us = sorted(self.decide_us)
        return {**(self._policy_stats or getattr(self.policy, "latency_stats", dict)()),
            "updates": self.updates, "missed": self.missed, "errors": self.errors,
            "late_wakeups": self.late_wakeups, "skipped_ticks": self.skipped_ticks,
            "decide_us_p50": _quantile(us, 0.50), "decide_us_p99": _quantile(us, 0.99),
            "decide_us_max": us[-1] if us else math.nan, "last_error": self.last_error,
        }

    def close(self) -> None:
        self._policy_stats = getattr(self.policy, "latency_stats", dict)()  # before close() ends them
        getattr(self.policy, "close", _nothing)()
        if self.writer is not None:
            self.writer.close()


def _nothing() -> None:
    return None


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
