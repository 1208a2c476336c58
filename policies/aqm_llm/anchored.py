"""The anchored head (`action: anchored`): a bounded correction to DualPI2's own p'.

The coupled head (coupled.py) predicts log10 p' outright. This one is handed DualPI2's p'
for the same queue (anchor.py: the PI integrator the model cannot infer from a short context)
and predicts how far to depart from it, at most `span` decades either way (ModelConfig
.anchor_span: a trust region around DualPI2, as offline RL keeps a learned policy near the
data's):

    log10 p' = log10 p'_A + span * tanh(d)          d = 0 at initialisation: DualPI2 itself
    k        = as the coupled head (2 at initialisation, in [1, 4])
    p' = 0   where p'_A = 0 (an empty queue: nothing to correct)

It emits the coupled head's raw layout (gate logit, log10 p', k raw), so probabilities,
labels and the loss in log space are the coupled head's (coupled.py). The gate is not learned:
it is the anchor's, and rows where the anchor is 0 teach nothing (`mask`).
"""

from __future__ import annotations

import torch
from torch import nn

from policies.aqm_llm.coupled import CLASSIC, L4S, LOG10_MIN

GATE_LOGIT = 30.0


class AnchoredHead(nn.Module):
    """hidden [..., width], anchor log10 p' [...] -> coupled raw outputs [..., 3]."""

    def __init__(self, width: int, span: float) -> None:
        super().__init__()
        self.span = span  # decades: 0.3 keeps p' within 2x of DualPI2's (p_C within 4x)
        self.proj = nn.Linear(width, 2)  # correction d, k raw
        with torch.no_grad():
            self.proj.weight.mul_(0.1)
            self.proj.bias.zero_()

    def forward(self, hidden: torch.Tensor, anchor_log: torch.Tensor) -> torch.Tensor:
        raw = self.proj(hidden)
        on = anchor_log > LOG10_MIN
        gate = torch.where(on, GATE_LOGIT, -GATE_LOGIT).to(raw.dtype)
        log_p = anchor_log.to(raw.dtype) + self.span * torch.tanh(raw[..., 0])
        return torch.stack([gate, log_p, raw[..., 1]], dim=-1)


def coupled_probs(p_base: float, k: float) -> list[list[float]]:
    """coupled.coupled_probs for one p' and k in plain floats (the control loop's re-anchoring,
    policy.reanchor): per class (enqueue, drop, mark), classes in CLASSES order."""
    p_c, p_cl = p_base * p_base, k * p_base
    if p_cl > 1.0:  # overload: L drops with p_C and marks the rest, C drops (ECN off)
        rows = {L4S: [0.0, p_c, 1.0 - p_c], CLASSIC: [1.0 - p_c, p_c, 0.0]}
    else:
        rows = {L4S: [1.0 - p_cl, 0.0, p_cl], CLASSIC: [1.0 - p_c, 0.0, p_c]}
    return [rows[i] for i in range(len(rows))]


def mask(out: torch.Tensor) -> torch.Tensor:
    """1 on steps whose anchor is positive (the only ones a correction acts on)."""
    return (out[..., 0] > 0).to(out.dtype)
