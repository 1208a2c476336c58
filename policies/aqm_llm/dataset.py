"""The experience pool: control-loop rows of many runs, cut into windows for training.

One run directory is one episode: its rows are results/<run>/telemetry/control/part-*.parquet.
A pool file (pool.parquet) is those rows concatenated with a column `episode` (the run id) and,
when the run's manifest names one, `scenario` (so an evaluation can hold scenarios out).

Per row: state features (features.py), the behaviour policy's action as a per-class
distribution over {enqueue, drop, mark} = (1 - p_drop - p_mark, p_drop, p_mark) from the
Decision.flat() columns, and a return-to-go. The reward is recomputed from the state columns
with reward.py (the logged `reward` column is ignored, so a new reward applies to old runs).
Row i's decision shows its effect in row i+1's state, so the return-to-go of row i is the
discounted *average* of rewards i+1, i+2, ... of its episode:
    rtg_i = sum_k gamma^k r_{i+1+k} / sum_k gamma^k
or, with a horizon H in seconds (issue 14, item 3: gamma 0.98 per 16 ms row is a 0.8 s
horizon, while Reno at 100 Mbit/s and 50 ms needs about 5 s to recover from one halving), a
discount per second: reward m weighs exp(-(t_m - t_{i+1}) / H), whatever the update interval.
An average, not a sum, so it has the scale of one reward and does not depend on how much of
the episode is left; the deployed policy conditions on a fixed high quantile of it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from policies import telemetry
from policies.aqm_llm import features as F
from policies.aqm_llm.reward import DEFAULT, RewardWeights, reward_columns
from policies.base import CLASSES, HISTORY_LEN, ClassState, QueueState
from policies.errors import PolicyError as UserError

CONTROL_DIR = Path("telemetry") / "control"
ACTION_COLS = [f"{c}_{k}" for c in CLASSES for k in ("p_drop", "p_mark")]


# ---------------------------------------------------------------- reading runs into a pool
def find_runs(path: str | Path) -> list[Path]:
    """`path` itself if it is a run directory, else the run directories directly inside it."""
    p = Path(path)
    if (p / CONTROL_DIR).is_dir():
        return [p]
    runs = sorted(d for d in p.iterdir() if (d / CONTROL_DIR).is_dir()) if p.is_dir() else []
    if not runs:
        raise UserError(f"{p}: not a run directory (no {CONTROL_DIR}/) and holds none")
    return runs


def read_run(run: Path) -> pd.DataFrame:
    frame = telemetry.read(run / CONTROL_DIR)
    if frame.empty:
        raise UserError(f"{run}: {CONTROL_DIR}/ holds no rows")
    frame["episode"] = run.name
    manifest = run / "manifest.json"
    if manifest.is_file():
        scenario = json.loads(manifest.read_text()).get("scenario")
        frame["scenario"] = str(scenario.get("name", "") if isinstance(scenario, dict) else scenario or "")
    return frame


def load_pool(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Rows from pool files (*.parquet with an `episode` column) and/or run directories."""
    frames = []
    seen: dict[str, Path] = {}  # episode -> where it came from
    for path in paths:
        p = Path(path)
        if p.is_file():
            new = [pd.read_parquet(p)]
            if "episode" not in new[0]:
                raise UserError(f"{p}: a pool file needs an 'episode' column")
        elif p.exists():
            new = [read_run(run) for run in find_runs(p)]
        else:
            raise UserError(f"{p}: no such pool file or run directory")
        # the same episode from two places (two shards' pools that share a run, or a run and a
        # pool holding it) would be counted twice, or merged into one nonsense episode
        for episode in {str(e) for frame in new for e in frame["episode"].unique()}:
            if episode in seen:
                raise UserError(f"episode {episode!r} is in both {seen[episode]} and {p}: give each "
                                "run once (merge the shards' pools, not their runs as well)")
            seen[episode] = p
        frames += new
    if not frames:
        raise UserError("no pool given")
    return check(pd.concat(frames, ignore_index=True))


def as_frame(pool: pd.DataFrame | str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """A pool given as a frame, one path, or several paths."""
    if isinstance(pool, pd.DataFrame):
        return check(pool)
    return load_pool([pool] if isinstance(pool, (str, Path)) else pool)


def exclude_scenarios(frame: pd.DataFrame, scenarios: Sequence[str]) -> pd.DataFrame:
    """The pool without the rows of `scenarios` (held out for a closed-loop evaluation)."""
    if not scenarios:
        return frame
    known = set(frame["scenario"]) if "scenario" in frame else set()
    unknown = sorted(set(scenarios) - known)
    if unknown:
        has = sorted(known) or "no scenario column"
        raise UserError(f"scenarios {unknown} are not in the pool (it has: {has})")
    return frame[~frame["scenario"].isin(list(scenarios))]


def build_pool(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the rows of the given runs (or pools) as one pool.parquet; returns its path."""
    frame = load_pool(paths)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    return out


def check(frame: pd.DataFrame) -> pd.DataFrame:
    need = set(F._flat_keys()) | set(ACTION_COLS) | {"episode"}
    missing = sorted(need - set(frame.columns))
    if missing:
        raise UserError(f"pool rows lack columns {missing} (QueueState.flat + Decision.flat expected)")
    frame = frame.copy()
    frame["episode"] = frame["episode"].astype(str)
    return frame


# ---------------------------------------------------------------- rows -> arrays
def action_targets(frame: pd.DataFrame) -> np.ndarray:
    """[n, 2, 3] per-class (p_enqueue, p_drop, p_mark) of the decision in force. A per-packet
    behaviour (CoDel: its `update` returns an empty decision, it acts at dequeue) is labelled
    with what it did instead: drops and marks over arrivals per class in the interval after
    the row (row i+1's counters, the consequence of row i's state; the last row its own)."""
    out = np.zeros((len(frame), len(CLASSES), 3))
    counted = per_packet(frame)
    for i, c in enumerate(CLASSES):
        drop = frame[f"{c}_p_drop"].fillna(0).clip(0, 1).to_numpy()
        mark = frame[f"{c}_p_mark"].fillna(0).clip(0, 1).to_numpy()
        if counted:
            arrivals = np.maximum(_next(frame, f"{c}_arrivals"), 1.0)
            drop = np.clip(_next(frame, f"{c}_drops") / arrivals, 0, 1)
            mark = np.clip(_next(frame, f"{c}_marks") / arrivals, 0, 1)
        mark = np.minimum(mark, 1 - drop)
        out[:, i] = np.stack([1 - drop - mark, drop, mark], axis=1)
    return out


def explored_rows(rows: pd.DataFrame) -> np.ndarray:
    """[n] 1.0 where the behaviour's decision was exploration noise. The `explore` column when
    the pool has it (runs collected since issue 14); else inferred: the old exploration scaled
    each class by its own factor (and raised a zero to 0.005 x factor), which breaks the rule
    every behaviour here keeps between the classes: nothing signalled, the same probability
    for both (single-queue PIE, RED, CoDel), or p_L = k sqrt(p_C) with k = 2 within 5% (DualPI2,
    PI2). A row that keeps none of them was explored."""
    if "explore" in rows:
        return rows["explore"].fillna(0).to_numpy(np.float32)
    if per_packet(rows):  # labelled from counters, which need not keep any rule
        return np.zeros(len(rows), np.float32)
    sig = action_targets(rows)[..., 1:].sum(-1)
    p_l, p_c = sig[:, CLASSES.index("l4s")], sig[:, CLASSES.index("classic")]
    none = (p_l == 0) & (p_c == 0)
    same = np.isclose(p_l, p_c, rtol=1e-6, atol=0)
    coupled = (p_c > 0) & (np.abs(p_l - 2 * np.sqrt(p_c)) <= 0.05 * p_l) | (p_l >= 1)
    return (~(none | same | coupled)).astype(np.float32)


def _next(frame: pd.DataFrame, col: str) -> np.ndarray:
    x = frame[col].fillna(0).to_numpy(np.float64)
    return np.concatenate([x[1:], x[-1:]])


def behaviour(name: str, rows: pd.DataFrame | None = None) -> str:
    """The behaviour policy of an episode: its `behaviour` column (runs collected since issue
    14), else parsed from the run id (<date>-<time>-<policy>-<datapath>, or sim-<policy>-<i>)."""
    if rows is not None and "behaviour" in rows and len(rows):
        return str(rows["behaviour"].iloc[0])
    m = re.match(r"^\d{8}-\d{6}-(.+)-[a-z0-9]+$", name) or re.match(r"^sim-(.+)-\d+", name)
    return m.group(1) if m else "unknown"


def per_packet(rows: pd.DataFrame) -> bool:
    """Does the episode's behaviour act per packet (its decisions say nothing)? The logged
    `per_packet` column, else the registry's flag for the behaviour's name."""
    if "per_packet" in rows and len(rows) and pd.notna(rows["per_packet"].iloc[0]):
        return bool(rows["per_packet"].iloc[0])
    import policies

    try:
        return bool(policies.resolve(behaviour(str(rows["episode"].iloc[0]), rows)).per_packet)
    except Exception:  # noqa: BLE001 - an unknown name: a policy acting through its decisions
        return False


def returns_to_go(rewards: np.ndarray, gamma: float, dt: np.ndarray | None = None,
                  horizon_s: float = 0.0) -> np.ndarray:
    """rtg_i over rewards i+1.. (see the module docstring); the last row, which has no
    successor, gets its own reward. With horizon_s > 0 and `dt` (row j's interval: the time
    since row j-1), the discount from row j to j+1 is exp(-dt_{j+1} / horizon_s), not gamma."""
    out, acc, weight = np.empty(len(rewards)), 0.0, 0.0
    out[-1:] = rewards[-1:]
    per_row = np.full(len(rewards), gamma)
    if horizon_s > 0 and dt is not None:  # per_row[j]: from row j to row j+1
        per_row[:-1] = np.exp(-np.maximum(np.asarray(dt, dtype=np.float64)[1:], 0.0) / horizon_s)
    for i in range(len(rewards) - 2, -1, -1):
        g = per_row[i + 1]
        acc, weight = rewards[i + 1] + g * acc, 1.0 + g * weight
        out[i] = acc / weight
    return out


def episodes(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(name, rows in time order) per episode, in order of first appearance."""
    for name, rows in frame.groupby("episode", sort=False):
        yield str(name), rows.sort_values("t", kind="stable").reset_index(drop=True)


def states(rows: pd.DataFrame) -> Iterator[QueueState]:
    """The QueueStates of one episode with the control loop's history convention."""
    hist = {k: {c: deque(maxlen=HISTORY_LEN) for c in CLASSES} for k in ("sojourn", "rate")}
    keys = [f.name for f in ClassState.__dataclass_fields__.values()]
    for row in rows.to_dict("records"):
        per = {c: ClassState(**{k: _num(row[f"{c}_{k}"], k) for k in keys}) for c in CLASSES}
        for c in CLASSES:
            hist["sojourn"][c].append(per[c].sojourn_ms)
            hist["rate"][c].append(per[c].arrival_bps)
        yield QueueState(t=float(row.get("t_rel", row["t"])), dt=float(row["dt"]),
                         link_rate_bps=float(row["link_rate_bps"]), **per,
                         sojourn_history={c: tuple(hist["sojourn"][c]) for c in CLASSES},
                         rate_history={c: tuple(hist["rate"][c]) for c in CLASSES})


COUNTS = ("backlog_bytes", "backlog_pkts", "arrivals", "drops", "marks")


def _num(value: float, key: str) -> float | int:
    value = 0.0 if pd.isna(value) else value
    return int(value) if key in COUNTS else float(value)


# ---------------------------------------------------------------- the pool as windows
@dataclass
class Episodes:
    """Normalised arrays of several episodes, concatenated; `start[e]:end[e]` is episode e."""

    feats: F.Features
    actions: np.ndarray  # [N, 2, 3]
    rtg: np.ndarray  # [N], raw (normalised at gather time with the model's stats)
    start: np.ndarray
    end: np.ndarray
    names: list[str]
    behaviours: list[str] = dataclasses.field(default_factory=list)  # per episode
    explore: np.ndarray | None = None  # [N] 1 where the behaviour explored (explored_rows())
    anchor: np.ndarray | None = None  # [N] raw log10 p' of the anchor (anchored feature set only)
    weight: np.ndarray | None = None  # [N] loss weight per step (advantage weights, value.py)

    def __len__(self) -> int:
        return int(self.end[-1]) if len(self.end) else 0

    def sample_starts(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Uniform over rows, so long episodes weigh more; windows may run past the end."""
        return rng.integers(0, len(self), batch)

    def grid_starts(self, window: int, limit: int) -> np.ndarray:
        starts = np.concatenate([np.arange(s, e, window) for s, e in zip(self.start, self.end, strict=True)])
        return starts[np.linspace(0, len(starts) - 1, min(limit, len(starts))).astype(int)]

    def gather(self, starts: np.ndarray, window: int, stats: F.NormStats) -> dict[str, np.ndarray]:
        """Windows of `window` steps from each start; steps past the episode end are padding."""
        ep_end = self.end[np.searchsorted(self.end, starts, side="right")]
        idx = starts[:, None] + np.arange(window)[None, :]
        valid = idx < ep_end[:, None]
        idx = np.minimum(idx, ep_end[:, None] - 1)
        v = valid.astype(np.float32)
        return {"rtg": (stats.norm_rtg(self.rtg[idx]) * v).astype(np.float32),
                "scalars": self.feats.scalars[idx] * v[..., None],
                "series": self.feats.series[idx] * v[..., None, None],
                "mask": self.feats.mask[idx] * v[..., None, None],
                "actions": (self.actions[idx] * v[..., None, None]).astype(np.float32),
                "explore": (self.explore[idx] * v if self.explore is not None else 0 * v).astype(np.float32),
                "anchor": (self.anchor[idx] if self.anchor is not None else 0 * v).astype(np.float32),
                "weight": (self.weight[idx] * v if self.weight is not None else v).astype(np.float32),
                "valid": v}


def learn_mask(eps: Episodes, behaviours: Sequence[str]) -> np.ndarray:
    """[N] float32: 1 on the steps of episodes whose behaviour is one of `behaviours`."""
    unknown = sorted(set(behaviours) - set(eps.behaviours))
    if unknown:
        raise UserError(f"learn_from: no training episode of behaviour {unknown[0]!r} "
                        f"(the pool has {', '.join(sorted(set(eps.behaviours)))})")
    per_episode = np.asarray([b in behaviours for b in eps.behaviours], dtype=np.float32)
    return np.repeat(per_episode, eps.end - eps.start)


def to_episodes(frame: pd.DataFrame, gamma: float, w: RewardWeights = DEFAULT, horizon_s: float = 0.0,
                names: tuple[str, ...] = F.SCALAR_NAMES) -> tuple[Episodes, F.Features]:
    """Arrays of every episode (features raw, not yet normalised, in the feature set `names`)
    in one container."""
    feats, acts, rtgs, lengths, ep_names, kinds, explore = [], [], [], [], [], [], []
    for name, rows in episodes(frame):
        kinds.append(behaviour(name, rows))
        explore.append(explored_rows(rows))
        rows = rows.fillna({k: 0.0 for k in F._flat_keys()})
        feats.append(F.from_rows(rows, names))
        acts.append(action_targets(rows))
        rtgs.append(returns_to_go(np.asarray(reward_columns(rows, w), dtype=np.float64), gamma,
                                  rows["dt"].to_numpy(np.float64), horizon_s))
        lengths.append(len(rows))
        ep_names.append(name)
    end = np.cumsum(lengths)
    raw = F.concat(feats)
    eps = Episodes(raw, np.concatenate(acts), np.concatenate(rtgs), end - np.asarray(lengths), end, ep_names,
                   kinds, np.concatenate(explore) if explore else None,
                   raw.scalars[:, 1].copy() if names[1] == F.ANCHOR_NAME else None)
    return eps, raw


def split(frame: pd.DataFrame, val_frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out whole episodes; a pool of one episode holds out its last val_frac instead."""
    names = list(dict.fromkeys(frame["episode"]))
    if len(names) == 1:
        rows = frame.sort_values("t", kind="stable")
        cut = int(len(rows) * (1 - val_frac))
        val = rows.iloc[cut:].copy()
        val["episode"] = names[0] + "#heldout"
        return rows.iloc[:cut], val
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[str]] = {}
    for name in names:  # stratified: a share of every behaviour's episodes (issue 14, item 7)
        by_kind.setdefault(behaviour(name, frame[frame["episode"] == name]), []).append(name)
    held: set[str] = set()
    for kind in sorted(by_kind):
        eps = by_kind[kind]
        n_val = min(len(eps) - 1, max(1, round(val_frac * len(eps))))
        held |= set(rng.permutation(eps)[:n_val].tolist())
    if not held:  # one episode per behaviour: hold out one episode
        held = {str(rng.permutation(names)[0])}
    is_val = frame["episode"].isin(held)
    return frame[~is_val], frame[is_val]


def prepare(frame: pd.DataFrame, gamma: float, val_frac: float = 0.2, seed: int = 0,
            w: RewardWeights = DEFAULT, horizon_s: float = 0.0,
            names: tuple[str, ...] = F.SCALAR_NAMES) -> tuple[Episodes, Episodes, F.NormStats]:
    """Train/validation episodes in the feature set `names`, normalised with statistics of the
    training episodes only."""
    train_rows, val_rows = split(check(frame), val_frac, seed)
    train, raw = to_episodes(train_rows, gamma, w, horizon_s, names)
    stats = F.NormStats.fit(raw, train.rtg, names=names)
    val, _ = to_episodes(val_rows, gamma, w, horizon_s, names)
    for eps in (train, val):
        eps.feats = stats.apply(eps.feats)
    return train, val, stats


# ---------------------------------------------------------------- a synthetic pool for tests
def synthetic_pool(behaviours: Sequence[str] = ("dualpi2", "pie"), seconds: float = 4.0, seed: int = 0,
                   epsilon: float = 0.2) -> pd.DataFrame:
    """Episodes of registry policies with exploration noise on the toy fluid queue (fluid.py);
    for tests and smoke runs only: real pools come from `testbed collect`."""
    import policies
    from policies.aqm_llm.fluid import FluidScenario, simulate
    from policies.explore import Explore

    scenarios = [FluidScenario(link_mbps=20, rtt_ms=20, n_l4s=1, n_classic=1, seconds=seconds),
                 FluidScenario(link_mbps=50, rtt_ms=40, n_l4s=4, n_classic=2, seconds=seconds),
                 FluidScenario(link_mbps=10, rtt_ms=10, n_l4s=2, n_classic=1, udp_mbps=3, seconds=seconds,
                               rate_change=(seconds / 2, 5.0))]
    frames = []
    for i, (name, sc) in enumerate((b, s) for b in behaviours for s in scenarios):
        behaviour = Explore(policies.make(name, {}), epsilon=epsilon, seed=seed + i)
        frame = simulate(behaviour, sc, seed=seed + i)
        frame["episode"] = f"sim-{name}-{i}"
        frame["scenario"] = f"fluid-{i % len(scenarios)}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
