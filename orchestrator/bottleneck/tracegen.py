"""A seeded generator of cellular-like capacity traces, in Mahimahi's format.

The model (a Markov-modulated rate process, the usual first-order model of a cellular
downlink's capacity):

1. The link is in one of `levels` (mean rates in Mbit/s, e.g. 2, 6, 12, 24, 48: coverage
   from poor to good). Time advances in steps of `step_ms`. At each step the link stays in
   its level with probability `stay`, else moves to a neighbouring level (one up or one down,
   with equal probability; at the ends, the only neighbour). So capacity wanders across an
   order of magnitude within seconds, as the issue's cellular traces do, and the mean time
   in a level is step_ms / (1 - stay).
2. Within a step the rate is the level's mean times a log-normal factor exp(N(0, sigma^2) -
   sigma^2 / 2) (mean 1): fast fading and scheduling noise around the level.
3. The rate becomes delivery opportunities one millisecond at a time: a credit grows by the
   packets the rate carries in that millisecond (rate * 1 ms / 12000 bit) and every whole
   packet of credit is one opportunity (one line) at that millisecond.

The trace's last line is its duration, so a replay repeats with exactly that period. The
same parameters and seed give the same file, byte for byte (numpy's PCG64 generator).

    testbed trace generate --seed 7 --duration 60s --out my.trace
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.spec.schedule import MAHIMAHI_BYTES, ScheduleError

PACKET_BITS = MAHIMAHI_BYTES * 8


@dataclass(frozen=True)
class CellularModel:
    levels: Sequence[float] = field(default_factory=lambda: (2.0, 6.0, 12.0, 24.0, 48.0))  # Mbit/s
    stay: float = 0.9  # probability to keep the level at each step
    step_ms: int = 100
    sigma: float = 0.3  # log-normal spread of the rate within a step
    start_level: int | None = None  # default: the middle level

    def check(self) -> None:
        if not self.levels or any(not v > 0 for v in self.levels):
            raise ScheduleError("levels", f"expected positive rates in Mbit/s, got {list(self.levels)}")
        if not 0 <= self.stay <= 1:
            raise ScheduleError("stay", f"expected a probability between 0 and 1, got {self.stay}")
        if self.step_ms < 1:
            raise ScheduleError("step_ms", f"expected at least 1 ms, got {self.step_ms}")
        if self.sigma < 0:
            raise ScheduleError("sigma", f"expected a non-negative spread, got {self.sigma}")
        if self.start_level is not None and not 0 <= self.start_level < len(self.levels):
            raise ScheduleError("start_level", f"expected 0..{len(self.levels) - 1}, got {self.start_level}")


def rates(model: CellularModel, duration_s: float, seed: int) -> np.ndarray:
    """The rate (bit/s) of each step of the trace: the modulated process of steps 1-2."""
    model.check()
    if not duration_s > 0:
        raise ScheduleError("duration", f"expected a positive duration, got {duration_s:g} s")
    rng = np.random.default_rng(seed)
    n = int(np.ceil(duration_s * 1e3 / model.step_ms))
    top = len(model.levels) - 1
    level = top // 2 if model.start_level is None else model.start_level
    out = np.empty(n)
    moves = rng.random(n)
    ups = rng.random(n)
    fading = np.exp(rng.normal(0.0, model.sigma, n) - model.sigma ** 2 / 2)
    for k in range(n):
        if k and moves[k] >= model.stay and top > 0:
            if level == 0:
                level = 1
            elif level == top:
                level = top - 1
            else:
                level += 1 if ups[k] < 0.5 else -1
        out[k] = model.levels[level] * 1e6 * fading[k]
    return out


def opportunities(step_rates: np.ndarray, step_ms: int, duration_s: float) -> list[int]:
    """Step 3: millisecond timestamps, one per 1500-byte delivery opportunity."""
    total_ms = int(round(duration_s * 1e3))
    per_ms = np.repeat(step_rates, step_ms)[:total_ms] * 1e-3 / PACKET_BITS
    credit = np.cumsum(per_ms)
    whole = np.floor(credit + 1e-9).astype(np.int64)
    counts = np.diff(np.concatenate(([0], whole)))
    ms = np.repeat(np.arange(1, total_ms + 1), counts).tolist()
    if not ms or ms[-1] != total_ms:
        ms.append(total_ms)  # the period: a replay repeats exactly every duration_s
    return ms


def generate(model: CellularModel, duration_s: float, seed: int) -> list[int]:
    return opportunities(rates(model, duration_s, seed), model.step_ms, duration_s)


def write(path: str | Path, ms: list[int], model: CellularModel, duration_s: float, seed: int) -> Path:
    """The trace (one timestamp per line) and, beside it, FILE.json with how it was made."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{m}\n" for m in ms))
    meta = {"generator": "orchestrator.bottleneck.tracegen", "model": "markov-modulated",
            **asdict(model), "levels": list(model.levels), "duration_s": duration_s, "seed": seed,
            "opportunities": len(ms), "mean_rate_mbps": len(ms) * PACKET_BITS / duration_s / 1e6}
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path
