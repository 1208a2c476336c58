"""The coupled action head (issue 14, item 1): predict what DualPI2 controls, in log space.

The softmax head (head.L4SHead) learns a per-class distribution over {enqueue, drop, mark}
with a cross-entropy on a linear scale: an error at p = 3.5e-5 (what two Reno flows filling
100 Mbit/s at 50 ms need) costs it about 1e-3 nats, so it cannot see it, and nothing ties the
classes together. This head instead predicts, per step,

    gate      a logit: is the base probability p' positive at all (DualPI2 at an empty queue: 0)
    log10 p'  the base probability in log space (RFC 9332: p' is what the PI controller runs)
    k         the coupling factor, in [1, 4] (2 at initialisation, RFC 9332's default)

and derives the per-class probabilities with the coupling built in, as DualPI2 does:

    p_C = p'^2                  classic (a mark on a Not-ECT packet is a drop)
    p_L = min(1, k p')          L4S; on overload (k p' > 1) L drops with p_C and marks the rest
                                and C drops (ECN off), as RFC 9332 sec. 4.2.3 and Linux do

so L4S and Reno flows see the signals that equalise their rates whatever the scale.

Labels come from the behaviour's decision in force (the [2, 3] action distribution the pool
stores, dataset.action_targets): p' = sqrt(p_C) when the classic probability is positive,
else p_L / 2; k = p_L / sqrt(p_C) where both are positive and that ratio is a coupling the
head can express (single-queue behaviours such as PIE give the same p to both classes, which
is no coupling: those rows teach p' and the gate only). The loss is in log space: BCE for the
gate, Huber on log10 p' (rows whose label p' > 0) and on log10 k (rows that show a coupling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import nn

from policies.base import CLASSES

LOG10_MIN = -8.0  # p' below 1e-8 is p' = 0 (the kernel's coin never reaches 0: 2^-32 = 2.3e-10)
K_DEFAULT = 2.0  # RFC 9332 sec. 2.4
K_RANGE = (1.0, 4.0)  # k = K_DEFAULT * 2^tanh(x)
HUBER_DELTA = 1.0  # decades: quadratic within a factor of 10, linear beyond
N_OUT = 3  # gate logit, log10 p', raw k
L4S, CLASSIC = CLASSES.index("l4s"), CLASSES.index("classic")


class CoupledHead(nn.Module):
    """hidden [..., width] -> raw outputs [..., 3] (gate logit, log10 p', k raw)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, N_OUT)
        with torch.no_grad():
            self.proj.weight.mul_(0.1)
            self.proj.bias.copy_(torch.tensor([0.0, -3.0, 0.0]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def parts(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate logit, log10 p' clamped to [LOG10_MIN, 0], k in K_RANGE) of raw outputs [..., 3]."""
    log_p = out[..., 1].clamp(LOG10_MIN, 0.0)
    k = K_DEFAULT * torch.pow(2.0, torch.tanh(out[..., 2]))
    return out[..., 0], log_p, k


def base_probability(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p' with the gate applied: 0 where the gate says so, k)."""
    gate, log_p, k = parts(out)
    return torch.where(gate > 0, torch.pow(10.0, log_p), torch.zeros_like(log_p)), k


def coupled_probs(p_base: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """p' [...] and k [...] -> per-class (enqueue, drop, mark) [..., 2, 3], DualPI2's way."""
    p_c = p_base ** 2
    p_cl = k * p_base
    zero = torch.zeros_like(p_c)
    overload = p_cl > 1.0
    l4s = torch.where(overload[..., None], torch.stack([zero, p_c, 1.0 - p_c], -1),
                      torch.stack([1.0 - p_cl, zero, p_cl], -1))
    classic = torch.where(overload[..., None], torch.stack([1.0 - p_c, p_c, zero], -1),  # ECN off
                          torch.stack([1.0 - p_c, zero, p_c], -1))
    rows = [None, None]
    rows[L4S], rows[CLASSIC] = l4s, classic
    return torch.stack(rows, dim=-2)


def probs(out: torch.Tensor) -> torch.Tensor:
    """Raw head outputs [..., 3] -> [..., 2, 3] probabilities (what the datapath applies)."""
    return coupled_probs(*base_probability(out))


def signal(actions: torch.Tensor) -> torch.Tensor:
    """[..., 2, 3] distributions -> [..., 2] probability of a congestion signal (drop + mark)."""
    return (actions[..., 1] + actions[..., 2]).clamp(0.0, 1.0)


def labels(actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The coupled labels of behaviour actions [..., 2, 3] (see the module docstring)."""
    sig = signal(actions)
    p_l, p_c = sig[..., L4S], sig[..., CLASSIC]
    p_base = torch.where(p_c > 0, p_c.sqrt(), p_l / K_DEFAULT)
    gate = p_base > 10.0 ** LOG10_MIN
    log_p = torch.log10(p_base.clamp(min=10.0 ** LOG10_MIN))
    both = (p_c.sqrt() > 10.0 ** LOG10_MIN) & (p_l > 10.0 ** LOG10_MIN) & (p_l < 1.0)
    k = p_l / p_c.sqrt().clamp(min=10.0 ** LOG10_MIN)
    coupled = both & (k >= K_RANGE[0]) & (k <= K_RANGE[1])
    return {"gate": gate.float(), "log_p": log_p, "log_k": torch.log10(k.clamp(*K_RANGE)),
            "coupled": coupled.float()}


def coupled_loss(out: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor,
                 gate_loss: bool = True) -> torch.Tensor:
    """BCE(gate) + Huber(log10 p') on rows with p' > 0 + Huber(log10 k) on coupled rows,
    each a mean over the valid steps it applies to; gate_loss=False leaves the BCE out (a
    head whose gate is not learned: anchored.py)."""
    lab = labels(actions)
    gate, log_p, k = parts(out)
    bce = nnf.binary_cross_entropy_with_logits(gate, lab["gate"], reduction="none")
    hub_p = nnf.huber_loss(log_p, lab["log_p"], delta=HUBER_DELTA, reduction="none")
    hub_k = nnf.huber_loss(torch.log10(k), lab["log_k"], delta=HUBER_DELTA, reduction="none")
    on_p, on_k = valid * lab["gate"], valid * lab["coupled"]
    return ((bce * valid).sum() / valid.sum().clamp(min=1.0) * gate_loss
            + (hub_p * on_p).sum() / on_p.sum().clamp(min=1.0)
            + (hub_k * on_k).sum() / on_k.sum().clamp(min=1.0))


def log_errors(pred: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor) -> dict[str, list[float]]:
    """Per class, |log10 p_model - log10 p_label| of the signal probability on valid steps whose
    label is positive (both floored at 1e-8, so a model that says 0 where the label says 1e-4
    is 4 decades off): the lists, for a median over many batches."""
    floor = 10.0 ** LOG10_MIN
    p_model, p_label = signal(pred), signal(actions)
    out = {}
    for i, cls in enumerate(CLASSES):
        sel = (valid > 0) & (p_label[..., i] > floor)
        err = (torch.log10(p_model[..., i].clamp(min=floor)) - torch.log10(p_label[..., i])).abs()
        out[cls] = err[sel].tolist()
    return out


def median(values: list[float]) -> float:
    return float(torch.tensor(values).median()) if values else math.nan
