"""StateEncoder: normalised features -> state tokens of the backbone's width.

Seven tokens per state, like the paper's seven, but of meaningful, normalised numbers:
  3 scalar tokens   link, L4S class, classic class (features.GROUPS): a small MLP each;
  4 series tokens   per-class sojourn and arrival-rate history: (value, mask) channels
                    through two 1D convolutions, flattened, projected.
A shared LayerNorm whose gain starts at the backbone's embedding scale, so our tokens enter
the residual stream at the magnitude the pretrained layers expect of word embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.aqm_llm.features import GROUPS, N_SERIES
from policies.base import HISTORY_LEN

N_STATE_TOKENS = len(GROUPS) + N_SERIES


def token_mlp(n_in: int, hidden: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, width))


def scaled_norm(width: int, scale: float) -> nn.LayerNorm:
    norm = nn.LayerNorm(width)
    nn.init.constant_(norm.weight, scale)
    return norm


class SeriesConv(nn.Module):
    """One time series (with its validity mask) -> one token."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(2, channels, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(channels, channels, 3, padding=1), nn.GELU())
        self.proj = nn.Linear(channels * HISTORY_LEN, width)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lead = values.shape[:-1]
        x = torch.stack([values, mask], dim=-2).reshape(-1, 2, HISTORY_LEN)
        return self.proj(self.conv(x).flatten(1)).reshape(*lead, -1)


class StateEncoder(nn.Module):
    def __init__(self, width: int, hidden: int = 128, channels: int = 16, scale: float = 1.0) -> None:
        super().__init__()
        self.sizes = list(GROUPS.values())
        self.scalar = nn.ModuleList(token_mlp(n, hidden, width) for n in self.sizes)
        self.series = nn.ModuleList(SeriesConv(channels, width) for _ in range(N_SERIES))
        self.norm = scaled_norm(width, scale)

    def forward(self, scalars: torch.Tensor, series: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[..., N_SCALARS], [..., N_SERIES, H], [..., N_SERIES, H] -> [..., N_STATE_TOKENS, width]"""
        groups = torch.split(scalars, self.sizes, dim=-1)
        tokens = [f(g) for f, g in zip(self.scalar, groups, strict=True)]
        tokens += [f(series[..., i, :], mask[..., i, :]) for i, f in enumerate(self.series)]
        return self.norm(torch.stack(tokens, dim=-2))
