"""Benchmark: how exactly the nfqueue datapath follows a dynamic link, with real traffic.

    python bench/dynamic_link.py

1. A bulk CUBIC flow (FIFO, 1.5 BDP) on 50 -> 10 -> 50 Mbit/s, 6 s per plateau: its goodput
   on each plateau from the second RTT on, against the plateau's rate and against the TCP
   payload the link can carry (rate x 1448/1514).
2. UDP at 30 Mbit/s through a generated cellular trace (mean about 10 Mbit/s): 1500-byte
   packets delivered against the trace's delivery opportunities.

Builds its own testbed (name 'dynbench') and removes it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from orchestrator.bottleneck import tracegen  # noqa: E402
from orchestrator.experiment.run import Run, RunConfig  # noqa: E402
from orchestrator.providers import netns  # noqa: E402
from orchestrator.spec import dynamic  # noqa: E402
from orchestrator.spec import schedule as sm  # noqa: E402
from orchestrator.spec import schema as specmod  # noqa: E402
from orchestrator.spec.scenario import Scenario  # noqa: E402

from conftest import dumbbell_yaml, run_cli  # noqa: E402

PLATEAU = 6.0


def run(tb, out: Path, dyn: dict, flows: list[dict], duration: float) -> Path:
    scenario = Scenario.model_validate({"duration": f"{duration}s", "flows": flows})
    return Run(tb, scenario, RunConfig(policy="fifo", results_root=out, link_dynamics=dyn)).execute()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "tb.yaml").write_text(dumbbell_yaml("dynbench", senders=1, buffer="1.5bdp"))
        tb = netns.up(specmod.load(out / "tb.yaml"))
        try:
            steps = [{"at": "0s", "rate": "50mbit"}, {"at": f"{PLATEAU}s", "rate": "10mbit"},
                     {"at": f"{2 * PLATEAU}s", "rate": "50mbit"}]
            d = run(tb, out, dynamic.parse({"rate": steps}).to_json(),
                    [{"name": "bulk", "kind": "tcp", "src": "s1", "dst": "rx", "cc": "cubic"}], 3 * PLATEAU)
            cap = json.loads((d / "telemetry/capacity.json").read_text())
            shift = cap["t0_epoch"] - json.loads((d / "manifest.json").read_text())["started"]
            ts = pd.read_parquet(d / "tables/timeseries.parquet")
            print(f"{'plateau':<8} {'rate Mbit/s':>11} {'goodput':>8} {'/ rate':>7} {'/ payload cap.':>14}")
            for k, rate in enumerate((50.0, 10.0, 50.0)):
                a, b = shift + k * PLATEAU + 0.04, shift + (k + 1) * PLATEAU
                g = ts[(ts["t"] >= a) & (ts["t"] + 0.1 <= b)]["bulk_goodput_mbps"].mean()
                print(f"{k + 1:<8} {rate:>11g} {g:>8.2f} {g / rate:>7.3f} {g / (rate * 1448 / 1514):>14.3f}")
            ms = tracegen.generate(tracegen.CellularModel(levels=(4.0, 8.0, 16.0), step_ms=200), 10.0, 5)
            (out / "cell.trace").write_text("".join(f"{m}\n" for m in ms))
            d = run(tb, out, dynamic.parse({"trace": str(out / "cell.trace")}).to_json(),
                    [{"name": "flood", "kind": "udp", "src": "s1", "dst": "rx", "rate": "30mbit",
                      "packet_size": 1472}], 10.0)
            t0 = json.loads((d / "telemetry/capacity.json").read_text())["t0_epoch"]
            parts = sorted((d / "telemetry/packets").glob("part-*.parquet"))
            log = pd.concat(pd.read_parquet(p) for p in parts)
            dep = log["t_departure"].to_numpy(np.float64) - t0
            full = log["size"].to_numpy() == 1514
            lo, hi = 0.5, 9.5
            delivered = int(((dep > lo) & (dep <= hi) & full).sum())
            offered = sm.MahimahiTrace(ms).count(lo, hi)
            print(f"trace: {offered} opportunities in ({lo}, {hi}] s, {delivered} 1500-byte packets "
                  f"delivered ({delivered / offered:.4f})")
        finally:
            run_cli("down", "dynbench")


if __name__ == "__main__":
    main()
