"""Features: the numbers the models see, computed one way from pool rows and from a live state.

Scalars come in three groups, one token each for the LLM: the link, the L4S class, the
classic class. Counts, rates, bytes and delays are heavy-tailed and span decades across
scenarios (10-200 Mbit/s, 0.1-200 ms), so they go through log1p; ratios to the link rate make
the features comparable across link rates. Then z-scored with statistics from the training
pool (NormStats, saved with the model) and clipped, so an unseen scenario cannot feed the
network values it never saw (the paper's code fed raw values up to 1e10).

Time series: the last HISTORY_LEN values of each class's sojourn (log1p ms) and arrival rate
(fraction of the current link rate), oldest first, left-padded with zeros at the start of a
run, with a mask that says which entries are real. The history convention is the control
loop's (orchestrator/bottleneck/control.py): the current interval is the last entry.

Feature sets (issue 14, item 5): the update interval `dt` is no feature. It gave the behaviour
away (PIE ticks every 15 ms, PI2 30, DualPI2 16) and a slow model's skipped ticks looked like
PI2. Checkpoints trained before this (the shipped models/aqm-llm and its student) saw it as
`dt_ms`; their NormStats record those names (LEGACY_SCALAR_NAMES; a stats.json without names
is legacy too) and keep getting it. The current set keeps the slot, named `zero` and always
0, so both sets have one layout: the encoder's link token, the student's input width and
native/student.c (which reads dt from its input: it is given 0) are the same for both. The
set in force is the `names` of the model's NormStats, passed to state_vector and from_rows.
The anchored set (models with `action: anchored`, anchor.py) puts log10 of DualPI2's own p',
run beside the model, in that slot: the live policy passes it to state_vector, from_rows
replays it over the rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from policies.aqm_llm import anchor
from policies.base import CLASSES, HISTORY_LEN, QueueState

CLASS_KEYS = ("sojourn_ms", "sojourn_max_ms", "head_sojourn_ms", "backlog_bytes", "backlog_pkts",
              "arrival_bps", "departure_bps", "arrivals", "drops", "marks")
LINK_NAMES = ("log_link_rate_bps", "zero", "util", "log_backlog_ms")  # zero: where dt_ms was
CLASS_NAMES = tuple(f"log_{k}" for k in CLASS_KEYS) + (
    "arrival_util", "departure_util", "drop_frac", "mark_frac", "log_backlog_ms")
GROUPS = {"link": len(LINK_NAMES), "l4s": len(CLASS_NAMES), "classic": len(CLASS_NAMES)}
SCALAR_NAMES = LINK_NAMES + tuple(f"{c}_{n}" for c in CLASSES for n in CLASS_NAMES)
DT_NAME, ANCHOR_NAME = "dt_ms", "log_anchor_p"
LEGACY_SCALAR_NAMES = tuple(DT_NAME if n == "zero" else n for n in SCALAR_NAMES)
ANCHORED_SCALAR_NAMES = tuple(ANCHOR_NAME if n == "zero" else n for n in SCALAR_NAMES)
FEATURE_SETS = (SCALAR_NAMES, LEGACY_SCALAR_NAMES, ANCHORED_SCALAR_NAMES)
SERIES = ("l4s_sojourn", "classic_sojourn", "l4s_rate", "classic_rate")
N_SCALARS, N_SERIES = len(SCALAR_NAMES), len(SERIES)
CLIP = 10.0


class Features(NamedTuple):
    scalars: np.ndarray  # [N, N_SCALARS]
    series: np.ndarray  # [N, N_SERIES, HISTORY_LEN], zeros where mask is 0
    mask: np.ndarray  # [N, N_SERIES, HISTORY_LEN], 1.0 where a real value is


class _Math:
    """Scalar stand-ins for the numpy calls, so one formula serves rows and a live state fast."""

    log1p, maximum = staticmethod(math.log1p), staticmethod(max)


def scalar_values(cols: Mapping[str, Any], xp: Any = np, names: tuple[str, ...] = SCALAR_NAMES) -> list[Any]:
    """The N_SCALARS raw features, in `names` order (a FEATURE_SETS entry), from
    QueueState.flat() keys. The second is dt in ms for the legacy set, log10 of the anchor's
    p' (cols["anchor_log"]) for the anchored set, else 0."""
    link = xp.maximum(cols["link_rate_bps"], 1.0)
    total_dep = cols["l4s_departure_bps"] + cols["classic_departure_bps"]
    total_backlog = cols["l4s_backlog_bytes"] + cols["classic_backlog_bytes"]
    second = (cols["dt"] * 1e3 if names[1] == DT_NAME
              else cols["anchor_log"] if names[1] == ANCHOR_NAME else 0.0)
    out = [xp.log1p(link), second, total_dep / link, xp.log1p(total_backlog * 8e3 / link)]
    for cls in CLASSES:
        v = {k: xp.maximum(cols[f"{cls}_{k}"], 0.0) for k in CLASS_KEYS}
        out += [xp.log1p(v[k]) for k in CLASS_KEYS]
        arrivals = xp.maximum(v["arrivals"], 1.0)
        out += [v["arrival_bps"] / link, v["departure_bps"] / link, v["drops"] / arrivals,
                v["marks"] / arrivals, xp.log1p(v["backlog_bytes"] * 8e3 / link)]
    return out


VECTOR_LEN = N_SCALARS + 2 * N_SERIES * HISTORY_LEN


def from_state(state: QueueState, names: tuple[str, ...] = SCALAR_NAMES,
               anchor_log: float = 0.0) -> Features:
    """Features of one live state (N = 1): views into state_vector(state, names, anchor_log)."""
    return split_vector(state_vector(state, names, anchor_log))


def split_vector(buf: np.ndarray) -> Features:
    """Views of a [scalars, series, mask] vector as Features with N = 1."""
    h = N_SERIES * HISTORY_LEN
    return Features(buf[:N_SCALARS].reshape(1, N_SCALARS),
                    buf[N_SCALARS:N_SCALARS + h].reshape(1, N_SERIES, HISTORY_LEN),
                    buf[N_SCALARS + h:].reshape(1, N_SERIES, HISTORY_LEN))


def state_vector(state: QueueState, names: tuple[str, ...] = SCALAR_NAMES,
                 anchor_log: float = 0.0) -> np.ndarray:
    """Raw [scalars, series, mask] of one live state in one vector, for the feature set `names`
    (the model's NormStats.names); `anchor_log`: the anchor's log10 p' (anchor.Anchor) for the
    anchored set. Fast (tens of microseconds, the student's budget): plain floats, no
    dataclasses.asdict, one allocation."""
    buf = np.zeros(VECTOR_LEN)
    f = split_vector(buf)
    cols = _cols(state)
    cols["anchor_log"] = anchor_log
    f.scalars[0] = scalar_values(cols, _Math, names)
    hists = [state.sojourn_history.get(c, ()) for c in CLASSES]
    hists += [state.rate_history.get(c, ()) for c in CLASSES]
    link = max(state.link_rate_bps, 1.0)
    if all(len(h) >= HISTORY_LEN for h in hists):  # the usual case once a run is going
        series = f.series[0]
        series[:] = [h[-HISTORY_LEN:] for h in hists]
        series[:2] = np.log1p(np.maximum(series[:2], 0.0))
        series[2:] /= link
        f.mask[0] = 1.0
        return buf
    for i, hist in enumerate(hists):
        values = tuple(hist)[-HISTORY_LEN:]
        if values:
            row = [math.log1p(max(v, 0.0)) for v in values] if i < 2 else [v / link for v in values]
            f.series[0, i, HISTORY_LEN - len(values):] = row
            f.mask[0, i, HISTORY_LEN - len(values):] = 1.0
    return buf


_KEYS = {c: [(k, f"{c}_{k}") for k in CLASS_KEYS] for c in CLASSES}


def _cols(state: QueueState) -> dict[str, float]:
    """The QueueState.flat() entries the features use, without its dataclasses.asdict cost."""
    cols = {"dt": state.dt, "link_rate_bps": state.link_rate_bps}
    for c in CLASSES:
        per = vars(state.of(c))
        for key, name in _KEYS[c]:
            cols[name] = per[key]
    return cols


def from_rows(frame: pd.DataFrame, names: tuple[str, ...] = SCALAR_NAMES) -> Features:
    """Features of control-loop rows of ONE episode, in time order (history rebuilt from rows),
    for the feature set `names` (the anchored set replays the anchor over the rows)."""
    cols = {k: frame[k].to_numpy(np.float64) for k in _flat_keys()}
    if names[1] == ANCHOR_NAME:
        cols["anchor_log"] = anchor.series(frame)
    scalars = np.stack(np.broadcast_arrays(*scalar_values(cols, names=names)), axis=1)
    link = np.maximum(cols["link_rate_bps"], 1.0)
    raw = [np.log1p(np.maximum(cols[f"{c}_sojourn_ms"], 0.0)) for c in CLASSES]
    raw += [cols[f"{c}_arrival_bps"] for c in CLASSES]
    series, mask = [], []
    for i, x in enumerate(raw):
        windows, valid = _trailing_windows(x)
        series.append(windows if i < 2 else windows / link[:, None] * valid)
        mask.append(valid)
    return Features(scalars, np.stack(series, axis=1), np.stack(mask, axis=1))


def _trailing_windows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, H] windows ending at each row (inclusive), left-padded with zeros, and their mask."""
    padded = np.concatenate([np.zeros(HISTORY_LEN - 1), x])
    ones = np.concatenate([np.zeros(HISTORY_LEN - 1), np.ones(len(x))])
    view = np.lib.stride_tricks.sliding_window_view
    return view(padded, HISTORY_LEN).copy(), view(ones, HISTORY_LEN).copy()


def _flat_keys() -> list[str]:
    return list(QueueState(t=0.0, dt=0.0, link_rate_bps=0.0).flat())


def concat(parts: list[Features]) -> Features:
    return Features(*(np.concatenate(x, axis=0) for x in zip(*parts, strict=True)))


@dataclass
class NormStats:
    """Mean/std per scalar feature and per series, fitted on the training pool; plus the
    return-to-go scale and the return the deployed policy asks for (a high quantile)."""

    scalar_mean: list[float]
    scalar_std: list[float]
    series_mean: list[float]
    series_std: list[float]
    rtg_mean: float = 0.0
    rtg_std: float = 1.0
    rtg_target: float = 0.0
    names: tuple[str, ...] = SCALAR_NAMES

    @classmethod
    def fit(cls, f: Features, rtg: np.ndarray, target_quantile: float = 0.9,
            names: tuple[str, ...] = SCALAR_NAMES) -> NormStats:
        """Statistics of features `f`, computed with the feature set `names`."""
        s_mean, s_std = f.scalars.mean(0), f.scalars.std(0)
        valid = f.mask.sum((0, 2))
        ser_mean = (f.series * f.mask).sum((0, 2)) / np.maximum(valid, 1)
        ser_var = (((f.series - ser_mean[None, :, None]) * f.mask) ** 2).sum((0, 2)) / np.maximum(valid, 1)
        return cls(s_mean.tolist(), _safe_std(s_std).tolist(), ser_mean.tolist(),
                   _safe_std(np.sqrt(ser_var)).tolist(), float(rtg.mean()), float(_safe_std(rtg.std())),
                   float(np.quantile(rtg, target_quantile)), tuple(names))

    def apply(self, f: Features) -> Features:
        """Normalised float32 features; padded history entries stay exactly 0."""
        s = (f.scalars - np.asarray(self.scalar_mean)) / np.asarray(self.scalar_std)
        mean, std = (np.asarray(x)[None, :, None] for x in (self.series_mean, self.series_std))
        ser = (f.series - mean) / std
        ser = np.clip(ser, -CLIP, CLIP) * f.mask
        return Features(np.clip(s, -CLIP, CLIP).astype(np.float32), ser.astype(np.float32),
                        f.mask.astype(np.float32))

    def norm_rtg(self, rtg: Any) -> Any:
        return (rtg - self.rtg_mean) / self.rtg_std

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "names": list(self.names)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        d = json.loads(text)
        d["names"] = tuple(d.get("names", LEGACY_SCALAR_NAMES))  # no names: before they were saved
        if d["names"] not in FEATURE_SETS:
            raise ValueError("normalisation statistics were computed for other features "
                             f"({len(d['names'])} names, expected one of the {N_SCALARS}-name sets); retrain")
        return cls(**d)


def _safe_std(std: Any) -> Any:
    """A constant feature (std 0) is left unscaled rather than divided by zero."""
    return np.where(np.asarray(std) > 1e-6, std, 1.0)
