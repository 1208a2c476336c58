"""Benchmark: time of `testbed up` and `testbed down` for the shipped examples.

    python bench/up_down.py [--repeat 3]

Prints the median and min of each, per example. Runs the CLI as a user would (a fresh
process each time), so interpreter start-up is included.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["testbeds/mininet-like.yaml", "testbeds/eight-senders.yaml"]


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "orchestrator.cli"]
    print(f"{'example':<32} {'hosts':>5} {'up p50 s':>9} {'up min s':>9} "
          f"{'down p50 s':>11} {'down min s':>11}")
    for example in EXAMPLES:
        text = (ROOT / example).read_text()
        name = "bench" + str(EXAMPLES.index(example))
        text = "\n".join(f"name: {name}" if line.startswith("name:") else line for line in text.splitlines())
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        ups, downs = [], []
        for _ in range(args.repeat):
            ups.append(timed([*cli, "up", f.name]))
            downs.append(timed([*cli, "down", name]))
        hosts = text.count("role:")
        print(f"{example:<32} {hosts:>5} {statistics.median(ups):>9.2f} {min(ups):>9.2f} "
              f"{statistics.median(downs):>11.2f} {min(downs):>11.2f}")


if __name__ == "__main__":
    main()
