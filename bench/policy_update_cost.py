"""Cost of one policy.update() in microseconds, per rule-based policy (and CoDel's per-packet hook).

    .venv/bin/python bench/policy_update_cost.py [NAME ...] [--n 20000]

States are synthetic (gamma-distributed sojourns, backlogs that follow them) and built before
timing, so the figures are the policy's own cost. The budget is tupdate (15-30 ms); the
per-packet hook's budget is a packet time (about 240 us at 50 Mbit/s with 1500-byte packets).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import policies
from policies.base import ClassState, QueueState

BUILTIN = ["fifo", "red", "codel", "pie", "pi2", "dualpi2"]


def synthetic_states(n: int, seed: int = 0) -> list[QueueState]:
    rng = np.random.default_rng(seed)
    sojourn = rng.gamma(2.0, 8.0, size=(n, 2))
    states = []
    for i in range(n):
        cls = [ClassState(sojourn_ms=s, sojourn_max_ms=1.5 * s, head_sojourn_ms=s,
                          backlog_bytes=int(s * 6250), backlog_pkts=int(s * 4.2),
                          arrival_bps=50e6, departure_bps=48e6, arrivals=66) for s in sojourn[i]]
        states.append(QueueState(t=i * 0.016, dt=0.016, link_rate_bps=50e6, l4s=cls[0], classic=cls[1]))
    return states


def timed(fn, args_list: list) -> np.ndarray:
    out = np.empty(len(args_list))
    for i, args in enumerate(args_list):
        t0 = time.perf_counter_ns()
        fn(*args)
        out[i] = time.perf_counter_ns() - t0
    return out / 1e3


def report(label: str, us: np.ndarray) -> None:
    print(f"{label:<22} mean {us.mean():7.2f} us   p99 {np.percentile(us, 99):7.2f} us   n={len(us)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=BUILTIN)
    ap.add_argument("--n", type=int, default=20000)
    a = ap.parse_args()
    states = [(s,) for s in synthetic_states(a.n)]
    for name in a.names:
        report(f"{name}.update", timed(policies.make(name, {}).update, states))
    if "codel" in a.names:
        pol = policies.make("codel", {})
        packets = [("classic", s[0].classic.head_sojourn_ms / 1e3, 1.0 + i * 2.4e-4, 100_000)
                   for i, s in enumerate(states)]
        report("codel.on_dequeue", timed(pol.on_dequeue, packets))


if __name__ == "__main__":
    main()
