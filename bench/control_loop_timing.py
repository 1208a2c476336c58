"""Benchmark: the control loop's timer on the real clock (what the unit tests check on a fake
clock, as figures).

    python bench/control_loop_timing.py [--seconds 3] [--tupdate 0.01] [--work 0.004] [--load]

Runs ControlLoop.run with a trivial policy for `--seconds`, each tick doing `--work` seconds of
busy work, and prints: ticks due in the elapsed time, ticks accounted for (updates + skipped),
late wakeups, and the wakeup lateness (read time minus the tick's deadline, modulo tupdate) as
p50 / p99 / max.
With --load, a busy loop on every core competes with the timer, as a run's senders and datapath
would.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.bottleneck.control import ControlLoop  # noqa: E402
from policies.base import Decision, Policy, QueueState  # noqa: E402


class Nothing(Policy):
    name = "nothing"

    def update(self, state: QueueState) -> Decision:
        return Decision()


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tupdate", type=float, default=0.01)
    ap.add_argument("--work", type=float, default=0.004)
    ap.add_argument("--load", action="store_true")
    args = ap.parse_args()
    spinners = []
    if args.load:
        stop_at = time.time() + args.seconds + 1
        spinners = [multiprocessing.Process(target=_spin, args=(stop_at,))
                    for _ in range(os.cpu_count() or 1)]
        for p in spinners:
            p.start()
    loop = ControlLoop(Nothing(), tupdate_s=args.tupdate, log_dir=None)
    reads: list[float] = []

    def read(now: float) -> QueueState:
        reads.append(time.monotonic())
        end = time.perf_counter() + args.work
        while time.perf_counter() < end:
            pass
        return QueueState(t=now, dt=args.tupdate, link_rate_bps=50e6)

    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(read, lambda d: None, stop))
    t0 = time.monotonic()
    thread.start()
    time.sleep(args.seconds)
    stop.set()
    thread.join(5)
    for p in spinners:
        p.join()
    # the loop's start is not visible: take the phase of the least late read as the grid's, and
    # lateness modulo tupdate (a wakeup later than one tick shows up as skipped ticks)
    r = (np.array(reads) - t0) / args.tupdate
    r -= (r - np.floor(r)).min()
    lateness = np.maximum(r - np.floor(r + 1e-6), 0.0) * args.tupdate * 1e3
    due = (reads[-1] - t0) / args.tupdate
    print(f"tupdate {args.tupdate * 1e3:.1f} ms, work {args.work * 1e3:.1f} ms, load {args.load}: "
          f"{loop.updates} updates + {loop.skipped_ticks} skipped = "
          f"{loop.updates + loop.skipped_ticks} ticks accounted, {due:.1f} due; "
          f"{loop.late_wakeups} late wakeups (> tupdate/5)")
    print(f"wakeup lateness ms: p50 {np.percentile(lateness, 50):.3f}  p99 {np.percentile(lateness, 99):.3f}"
          f"  max {lateness.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
