"""Benchmark: how late HTB rate changes take effect when the timer process applies a
schedule (the ebpf and kernel datapaths' way to run a dynamic link).

    python bench/htb_lateness.py [--changes 200] [--every 0.05] [--load]

Builds a namespace with a veth under the HTB layout of each datapath (ebpf: 1:1 plus the
L and C classes 1:11 / 1:12, three `tc class change` per change; kernel: 1:1 alone), runs
orchestrator.bottleneck.htb_schedule in it with changes alternating 50 / 10 Mbit/s, and
prints the lateness of each change (tc returned - due) as p50 / p99 / max. With --load, a
busy loop on every core competes with the timer, as a run's senders and datapath would.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.bottleneck import htb_schedule as hs  # noqa: E402

LAYOUTS = {
    "ebpf": [{"parent": "1:", "classid": "1:1", "share": 1.0},
             {"parent": "1:1", "classid": "1:11", "share": 0.9, "prio": 0},
             {"parent": "1:1", "classid": "1:12", "share": 0.1, "prio": 1}],
    "kernel": [{"parent": "1:", "classid": "1:1", "share": 1.0}],
}


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def measure(layout: str, n: int, every: float, load: bool) -> np.ndarray:
    ns = f"tbbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    spinners = []
    try:
        def tc(*argv: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, "tc", *argv], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "add", "d0", "type", "veth", "peer",
                        "name", "d1"], check=True)
        tc("qdisc", "add", "dev", "d0", "root", "handle", "1:", "htb", "default", "12")
        for c in LAYOUTS[layout]:
            extra = ["prio", str(c["prio"])] if "prio" in c else []
            tc("class", "add", "dev", "d0", "parent", c["parent"], "classid", c["classid"], "htb",
               "rate", f"{int(50e6 * c['share'])}bit", "ceil", "50mbit", *extra)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "changes.jsonl"
            t0 = time.time() + 1.0
            changes = [[k * every, 10e6 if k % 2 else 50e6] for k in range(n)]
            cfg = Path(tmp) / "cfg.json"
            cfg.write_text(json.dumps({"dev": "d0", "t0_epoch": t0, "changes": changes,
                                       "classes": LAYOUTS[layout], "out": str(out)}))
            if load:
                for _ in range(os.cpu_count() or 1):
                    p = multiprocessing.Process(target=_spin, args=(t0 + n * every + 1,))
                    p.start()
                    spinners.append(p)
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                     "orchestrator.bottleneck.htb_schedule", str(cfg)], cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            while len(hs.read(str(out))) < n and proc.poll() is None:
                time.sleep(0.1)
            proc.terminate()
            proc.wait(10)
            rows = hs.read(str(out))
            if not all(r["ok"] for r in rows):
                raise SystemExit(f"{layout}: some tc class change failed")
            return np.array([r["late_ms"] for r in rows])
    finally:
        for p in spinners:
            p.terminate()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--every", type=float, default=0.05, help="seconds between changes")
    ap.add_argument("--load", action="store_true", help="a busy loop on every core")
    args = ap.parse_args()
    print(f"{'datapath':<8} {'tc/change':>9} {'changes':>7} {'late p50 ms':>11} {'p99 ms':>7} {'max ms':>7}"
          f"  {'(load)' if args.load else '(idle)'}")
    for layout in LAYOUTS:
        late = measure(layout, args.changes, args.every, args.load)
        print(f"{layout:<8} {len(LAYOUTS[layout]):>9} {late.size:>7} {np.percentile(late, 50):>11.2f} "
              f"{np.percentile(late, 99):>7.2f} {late.max():>7.2f}")


if __name__ == "__main__":
    main()
