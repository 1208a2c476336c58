"""Random loss on the bottleneck link, for wireless-like links: a fixed percentage, or the
two-state Gilbert-Elliott model.

In the spec (`bottleneck.loss`):

    loss: 1%                                   # every packet lost with probability 1%
    loss: {model: gilbert-elliott, p: 1%, r: 20%, loss_bad: 50%, loss_good: 0%}

Gilbert-Elliott, as netem's `loss gemodel p r 1-h 1-k` runs it: a Markov chain over two
states, Good and Bad, stepped once per packet: from Good to Bad with probability p, from
Bad back to Good with probability r; a packet is lost with probability loss_good in Good and
loss_bad in Bad. So losses come in bursts (mean burst state length 1/r packets), and the
long-run loss rate is  pi_B * loss_bad + pi_G * loss_good  with  pi_B = p / (p + r).

The link loses a packet after it has crossed the link (it used the capacity, as a corrupted
radio frame does), so the AQM's queue never sees it: it is counted apart from AQM drops.
Seeded: the same seed gives the same losses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.schedule import ScheduleError


@dataclass(frozen=True)
class LossModel:
    """p, r: transition probabilities per packet (Good->Bad, Bad->Good); loss in each state."""

    p: float = 0.0
    r: float = 1.0
    loss_good: float = 0.0
    loss_bad: float = 0.0

    @classmethod
    def bernoulli(cls, rate: float) -> LossModel:
        """Independent loss: one state, always Good, loss `rate`."""
        return cls(p=0.0, r=1.0, loss_good=rate, loss_bad=rate)

    @property
    def mean_loss(self) -> float:
        """The long-run fraction of packets lost."""
        if self.p + self.r == 0:
            return self.loss_good
        pi_bad = self.p / (self.p + self.r)
        return pi_bad * self.loss_bad + (1 - pi_bad) * self.loss_good

    def to_dict(self) -> dict[str, float]:
        return {"p": self.p, "r": self.r, "loss_good": self.loss_good, "loss_bad": self.loss_bad}


class Loss:
    """The model's state and its own random stream (not the AQM's coin tosses)."""

    def __init__(self, model: LossModel, seed: int | None = None) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.bad = False
        self.lost = 0
        self.seen = 0

    def lose(self) -> bool:
        """Step the chain for one packet; True if this packet is lost."""
        m, r = self.model, self.rng.random
        self.bad = (r() >= m.r) if self.bad else (r() < m.p)
        lost = r() < (m.loss_bad if self.bad else m.loss_good)
        self.seen += 1
        self.lost += lost
        return lost


def parse(value: Any) -> LossModel | None:
    """The spec's `loss:` value (None: no loss). Raises ScheduleError naming the key."""
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return LossModel.bernoulli(_fraction(value, ""))
    if not isinstance(value, dict):
        raise ScheduleError("", f"expected a percentage like '1%' or {{model: gilbert-elliott, p: ..., "
                                f"r: ...}}, got {value!r}")
    model = value.get("model")
    if model != "gilbert-elliott":
        raise ScheduleError(".model", f"expected 'gilbert-elliott', got {model!r}")
    known = {"model", "p", "r", "loss_good", "loss_bad"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ScheduleError(f".{unknown[0]}", "unknown key (expected model, p, r, loss_good, loss_bad)")
    for key in ("p", "r"):
        if key not in value:
            raise ScheduleError(f".{key}", "required key is missing")
    out = LossModel(p=_fraction(value["p"], ".p"), r=_fraction(value["r"], ".r"),
                    loss_good=_fraction(value.get("loss_good", 0), ".loss_good"),
                    loss_bad=_fraction(value.get("loss_bad", 1), ".loss_bad"))
    if out.r == 0:
        raise ScheduleError(".r", "expected a probability above 0 (else the Bad state never ends)")
    return out


def _fraction(value: Any, key: str) -> float:
    """'1%' -> 0.01; a bare number is a fraction (0.01). Must be in [0, 1]."""
    text = str(value).strip()
    try:
        f = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ScheduleError(key, f"expected a probability like '1%' or 0.01, got {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= f <= 1.0:
        raise ScheduleError(key, f"expected a probability between 0% and 100%, got {value!r}")
    return f
