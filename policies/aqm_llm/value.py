"""Advantage weights for advantage-weighted regression (AWR; Peng et al. 2019), issue 14 item 3.

Return conditioning alone learns the average of the behaviours in the pool: asking for a high
return moved the output by about 1%. AWR instead weights each training step's loss by
exp(A / beta), A = (return-to-go - V(state)), so the actions that did better than expected
from their state count more and those that did worse count less: the model leans towards the
best of its teachers (and of the exploration) state by state, not their mean.

V is a small MLP on the state's features only, never on return or action tokens (a value
that saw the return-to-go would explain it away and leave no advantage). It is fitted on the
training episodes, by mean squared error on the normalised return-to-go; advantages are in
those units, and beta is a fraction of their spread. Weights are capped (max_weight), as AWR
does, so a few lucky steps cannot dominate a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from policies.aqm_llm.features import Features, NormStats


def _inputs(f: Features) -> torch.Tensor:
    n = len(f.scalars)
    x = np.concatenate([f.scalars, f.series.reshape(n, -1), f.mask.reshape(n, -1)], axis=1)
    return torch.from_numpy(x.astype(np.float32))


def fit_value(feats: Features, rtg_norm: np.ndarray, seed: int = 0, steps: int = 1500,
              hidden: int = 128, batch: int = 512, lr: float = 1e-3) -> nn.Module:
    """An MLP V(state) fitted to the normalised returns-to-go of the training steps."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _inputs(feats), torch.from_numpy(np.asarray(rtg_norm, dtype=np.float32))
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen)
        loss = ((net(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def advantage_weights(feats: Features, rtg: np.ndarray, stats: NormStats, beta: float,
                      max_weight: float = 20.0, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Per step exp(A / (beta * std A)) capped at max_weight, and a summary for the history:
    the share of the return-to-go variance V explains, and the effective sample size."""
    y = np.asarray(stats.norm_rtg(rtg), dtype=np.float64)
    net = fit_value(feats, y, seed)
    with torch.no_grad():
        v = net(_inputs(feats)).squeeze(-1).double().numpy()
    adv = y - v
    scale = beta * max(float(adv.std()), 1e-6)
    w = np.exp(np.minimum(adv / scale, np.log(max_weight)))
    explained = 1.0 - float(adv.var()) / max(float(y.var()), 1e-12)
    ess = float(w.sum() ** 2 / (w ** 2).sum()) / len(w)
    return w.astype(np.float32), {"value_r2": explained, "awr_beta": beta,
                                  "weight_mean": float(w.mean()), "ess_share": ess}
