"""ControlLoop: deadlines, history, logging, errors and drift-free timing.

Deadlines and the timer are checked on a fake clock that only moves when the policy "works" or
the loop waits (plus lateness the test injects), so the verdicts do not depend on how loaded the
machine is: a 30 ms sleep against a 10 ms deadline, or a 10 ms period on a busy 2-core CI box,
used to make these flaky. The real-clock figures (tick rate, wakeup lateness under load) are a
benchmark: bench/control_loop_timing.py.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from orchestrator.bottleneck import control
from orchestrator.bottleneck.control import ControlLoop
from policies import telemetry
from policies.base import ClassDecision, ClassState, Decision, Policy, QueueState


class FakeClock:
    """Stands in for the `time` module inside orchestrator.bottleneck.control."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    perf_counter = monotonic

    def time(self) -> float:
        return 1.7e9 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class FakeStop:
    """The loop's stop event on the fake clock: wait(timeout) lets the time pass, plus the
    lateness `late[i]` injected into the i-th wakeup (1-based); set once `until` is reached."""

    def __init__(self, clock: FakeClock, until: float, late: dict[int, float] | None = None) -> None:
        self.clock, self.until, self.late, self.waits = clock, until, late or {}, 0

    def is_set(self) -> bool:
        return self.clock.t >= self.until

    def wait(self, timeout: float) -> bool:
        self.waits += 1
        self.clock.t += timeout + self.late.get(self.waits, 0.0)
        return self.is_set()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(control, "time", fake)
    return fake


class Counting(Policy):
    """Marks L4S with probability n/100 at its n-th update; takes `sleep_s` at `slow_at` updates
    (on `sleep`, the fake clock's in the deadline tests)."""

    name = "counting"

    def __init__(self, slow_at: tuple[int, ...] = (), sleep_s: float = 0.0,
                 fail_at: tuple[int, ...] = (), sleep=time.sleep) -> None:
        super().__init__()
        self.n = 0
        self.slow_at, self.sleep_s, self.fail_at, self.sleep = slow_at, sleep_s, fail_at, sleep
        self.seen: list[QueueState] = []

    def update(self, state: QueueState) -> Decision:
        self.n += 1
        self.seen.append(state)
        if self.n in self.fail_at:
            raise RuntimeError(f"boom at {self.n}")
        if self.n in self.slow_at:
            self.sleep(self.sleep_s)
        return Decision(l4s=ClassDecision(p_mark=self.n / 100))


def state(t: float, sojourn: float = 1.0) -> QueueState:
    return QueueState(t=t, dt=0.01, link_rate_bps=50e6,
                      l4s=ClassState(sojourn_ms=sojourn, arrival_bps=sojourn * 1e6),
                      classic=ClassState(sojourn_ms=2 * sojourn))


def test_deadline_miss_keeps_previous_decision_and_is_counted(clock: FakeClock) -> None:
    # a 250 ms deadline (binary-exact times): update 2 takes 750 ms, update 3 exactly 250 ms,
    # which is not a miss ("longer than the deadline")
    loop = ControlLoop(Counting(slow_at=(2, 3), sleep_s=0.75, sleep=clock.sleep), tupdate_s=0.25,
                       log_dir=None)
    assert loop.step(state(0), 0).l4s.p_mark == pytest.approx(0.01)
    assert loop.step(state(1), 1).l4s.p_mark == pytest.approx(0.01)  # update 2 was too slow
    loop.policy.sleep_s = 0.25
    assert loop.step(state(2), 2).l4s.p_mark == pytest.approx(0.03)
    assert (loop.missed, loop.errors, loop.updates) == (1, 0, 3)
    assert loop.stats()["decide_us_max"] == pytest.approx(750_000)


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


def test_rows_are_logged_to_parquet_parts(tmp_path: Path, clock: FakeClock) -> None:
    loop = ControlLoop(Counting(slow_at=(3,), sleep_s=0.03, sleep=clock.sleep), tupdate_s=0.01,
                       log_dir=tmp_path, reward_fn=lambda s, d: -s.l4s.sojourn_ms)
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
    assert list(rows["decide_us"]) == pytest.approx([0, 0, 30_000, 0, 0])


def test_reward_is_nan_without_reward_fn(tmp_path: Path) -> None:
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=tmp_path)
    loop.step(state(0), 0)
    loop.close()
    assert math.isnan(telemetry.read(tmp_path)["reward"].iloc[0])


def run_fake(loop: ControlLoop, clock: FakeClock, seconds: float, work_s: float = 0.0,
             late: dict[int, float] | None = None) -> list[float]:
    """Run the loop on the fake clock for `seconds`; the monotonic times of its reads."""
    reads: list[float] = []
    t0 = clock.t

    def read(now: float) -> QueueState:
        reads.append(clock.t - t0)
        clock.sleep(work_s)
        return state(now)

    loop.run(read, lambda d: None, FakeStop(clock, t0 + seconds, late))
    return reads


def test_timer_is_drift_free(clock: FakeClock) -> None:
    """Each tick does 4 ms of work in a 10 ms period: a relative timer would drift 40%, and
    read k would come at k * 14 ms. Absolute deadlines: read k at k * 10 ms exactly."""
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    reads = run_fake(loop, clock, 1.0, work_s=0.004)
    assert reads == pytest.approx([0.01 * k for k in range(1, 100)], abs=1e-9)
    assert loop.updates == len(reads) == 99 and (loop.late_wakeups, loop.skipped_ticks) == (0, 0)


def test_a_late_wakeup_does_not_shift_later_ticks(clock: FakeClock) -> None:
    """Wakeup 5 comes 3 ms late (over tupdate/5 = 2 ms: counted as late), wakeup 8 1 ms late
    (not counted); every other read stays on the 10 ms grid."""
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    reads = run_fake(loop, clock, 0.1, late={5: 0.003, 8: 0.001})
    grid = [0.01 * k for k in range(1, 10)]
    grid[4] += 0.003
    grid[7] += 0.001
    assert reads == pytest.approx(grid, abs=1e-9)
    assert (loop.late_wakeups, loop.skipped_ticks) == (1, 0)


def test_overrun_skips_ticks_and_counts_late_wakeups(clock: FakeClock) -> None:
    """Every tick works 25 ms in a 10 ms period: the loop reads again as soon as the work ends
    (every 25 ms), skipping the ticks that passed entirely instead of replaying them in a
    burst; ticks accounted for (updates + skipped) = ticks due by the last read."""
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    reads = run_fake(loop, clock, 0.5, work_s=0.025)
    assert reads == pytest.approx([0.01 + 0.025 * i for i in range(len(reads))], abs=1e-9)
    assert len(reads) == 20 and loop.late_wakeups == len(reads) - 1
    assert loop.updates + loop.skipped_ticks == int(reads[-1] / 0.01 + 1e-6)


def run_for(loop: ControlLoop, seconds: float, work_s: float = 0.0) -> list[float]:
    """Run the loop on the real clock for `seconds`; the monotonic times of its reads."""
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


def test_on_the_real_clock_ticks_follow_elapsed_time() -> None:
    """The real timer, checked by what holds whatever the scheduler's lateness: at each read the
    loop has accounted (update or counted skip) for exactly the ticks due since it started, so
    with the loop's start somewhere in [t0, first read - tupdate], updates + skipped lies within
    one tick of the elapsed time. A relative timer with this 4 ms of work per tick would
    account for ~36 ticks in 0.5 s, not ~50."""
    loop = ControlLoop(Counting(), tupdate_s=0.01, log_dir=None)
    t0 = time.monotonic()
    reads = run_for(loop, 0.5, work_s=0.004)
    accounted = loop.updates + loop.skipped_ticks
    assert loop.updates == len(reads) >= 2
    assert (reads[-1] - reads[0]) / 0.01 - 1 <= accounted <= (reads[-1] - t0) / 0.01 + 1


def test_stop_ends_the_loop_promptly() -> None:
    loop = ControlLoop(Counting(), tupdate_s=1.0, log_dir=None)
    t0 = time.monotonic()
    reads = run_for(loop, 0.05)
    assert reads == [] and time.monotonic() - t0 < 0.9  # well before the 1 s tick
