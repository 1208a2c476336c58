"""ControlLoop: deadlines, history, logging, errors and drift-free timing."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from orchestrator.bottleneck.control import ControlLoop
from policies import telemetry
from policies.base import ClassDecision, ClassState, Decision, Policy, QueueState


class Counting(Policy):
    """Marks L4S with probability n/100 at its n-th update; sleeps `slow_at` updates."""

    name = "counting"

    def __init__(self, slow_at: tuple[int, ...] = (), sleep_s: float = 0.0,
                 fail_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.n = 0
        self.slow_at, self.sleep_s, self.fail_at = slow_at, sleep_s, fail_at
        self.seen: list[QueueState] = []

    def update(self, state: QueueState) -> Decision:
        self.n += 1
        self.seen.append(state)
        if self.n in self.fail_at:
            raise RuntimeError(f"boom at {self.n}")
        if self.n in self.slow_at:
            time.sleep(self.sleep_s)
        return Decision(l4s=ClassDecision(p_mark=self.n / 100))


def state(t: float, sojourn: float = 1.0) -> QueueState:
    return QueueState(t=t, dt=0.01, link_rate_bps=50e6,
                      l4s=ClassState(sojourn_ms=sojourn, arrival_bps=sojourn * 1e6),
                      classic=ClassState(sojourn_ms=2 * sojourn))


def test_deadline_miss_keeps_previous_decision_and_is_counted() -> None:
    loop = ControlLoop(Counting(slow_at=(2,), sleep_s=0.03), tupdate_s=0.01, log_dir=None)
    assert loop.step(state(0), 0).l4s.p_mark == pytest.approx(0.01)
    assert loop.step(state(1), 1).l4s.p_mark == pytest.approx(0.01)  # update 2 was too slow
    assert loop.step(state(2), 2).l4s.p_mark == pytest.approx(0.03)
    assert (loop.missed, loop.errors, loop.updates) == (1, 0, 3)
    assert loop.stats()["decide_us_max"] >= 30_000


def test_policy_exception_keeps_previous_decision() -> None:
    loop = ControlLoop(Counting(fail_at=(2,)), tupdate_s=0.01, log_dir=None)
    loop.step(state(0), 0)
    assert loop.step(state(1), 1).l4s.p_mark == pytest.approx(0.01)
    assert loop.errors == 1 and loop.missed == 0
    assert "boom at 2" in loop.stats()["last_error"]
    assert loop.step(state(2), 2).l4s.p_mark == pytest.approx(0.03)


def test_history_comes_from_the_loop_and_is_bounded() -> None:
    policy = Counting()
    loop = ControlLoop(policy, tupdate_s=0.01, log_dir=None, history_len=3)
    for i in range(5):
        loop.step(state(i, sojourn=float(i)), i)
    last = policy.seen[-1]
    assert last.sojourn_history["l4s"] == (2.0, 3.0, 4.0)
    assert last.sojourn_history["classic"] == (4.0, 6.0, 8.0)
    assert last.rate_history["l4s"] == (2e6, 3e6, 4e6)
    assert policy.seen[0].sojourn_history["l4s"] == (0.0,)


def test_rows_are_logged_to_parquet_parts(tmp_path: Path) -> None:
    loop = ControlLoop(Counting(slow_at=(3,), sleep_s=0.03), tupdate_s=0.01, log_dir=tmp_path,
                       reward_fn=lambda s, d: -s.l4s.sojourn_ms)
    for i in range(5):
        loop.step(state(i / 10, sojourn=float(i)), 1000.0 + i)
    loop.close()
    rows = telemetry.read(tmp_path)
    assert len(rows) == 5
    assert list(rows["t"]) == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert list(rows["t_rel"]) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert list(rows["missed"]) == [False, False, True, False, False]
    # the logged decision is the one in force: update 3 missed, so update 2's stays
    assert list(rows["l4s_p_mark"]) == pytest.approx([0.01, 0.02, 0.02, 0.04, 0.05])
    assert list(rows["reward"]) == [0.0, -1.0, -2.0, -3.0, -4.0]
    for col in ("l4s_sojourn_ms", "classic_backlog_bytes", "classic_p_drop", "l4s_step_ms",
                "decide_us", "link_rate_bps"):
        assert col in rows.columns
    assert rows["decide_us"].iloc[2] >= 30_000


def test_reward_is_nan_without_reward_fn(tmp_path: Path) -> None:
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=tmp_path)
    loop.step(state(0), 0)
    loop.close()
    assert math.isnan(telemetry.read(tmp_path)["reward"].iloc[0])


def run_for(loop: ControlLoop, seconds: float, work_s: float = 0.0) -> list[float]:
    """Run the loop for `seconds` and return the monotonic times of its reads."""
    stop, reads = threading.Event(), []

    def read(now: float) -> QueueState:
        reads.append(time.monotonic())
        if work_s:
            time.sleep(work_s)
        return state(now)

    thread = threading.Thread(target=loop.run, args=(read, lambda d: None, stop))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    return reads


def test_timer_is_drift_free() -> None:
    """Each tick does 4 ms of work in a 10 ms period: a relative timer would drift 40%."""
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    reads = run_for(loop, 1.0, work_s=0.004)
    # the n-th read happens at start + n * tupdate (plus wakeup jitter), not n * (tupdate+work)
    span = reads[-1] - reads[0]
    assert span / (len(reads) - 1) == pytest.approx(0.01, rel=0.05)
    assert 90 <= len(reads) <= 101
    assert loop.updates == len(reads)


def test_overrun_skips_ticks_and_counts_late_wakeups() -> None:
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    reads = run_for(loop, 0.5, work_s=0.025)  # every tick overruns into the next two
    assert loop.late_wakeups >= len(reads) - 2
    assert loop.skipped_ticks >= len(reads) - 2
    assert len(reads) <= 0.5 / 0.025 + 2


def test_stop_ends_the_loop_promptly() -> None:
    loop = ControlLoop(Counting(), tupdate_s=1.0, log_dir=None)
    t0 = time.monotonic()
    reads = run_for(loop, 0.05)
    assert reads == [] and time.monotonic() - t0 < 0.5
