"""The L4S-LM head and the two extra embeddings of the return-conditioned recipe.

L4SHead: a linear map of one hidden state to 2 x 3 logits: for each class (l4s, classic) a
distribution over {enqueue, drop, mark}. One forward pass, no token generation, so there is
no invalid answer to parse; the datapath applies the probabilities by a coin toss per packet.
Its bias starts at "enqueue almost always", what an AQM does most of the time.

ReturnEmbedding / ActionEmbedding: a return-to-go (normalised scalar) and an action (the 2 x 3
distribution) each become one token, as in Decision Transformer / NetLLM.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.aqm_llm.encoder import scaled_norm, token_mlp
from policies.base import CLASSES

N_ACTIONS = 3  # Action.ENQUEUE, DROP, MARK


class L4SHead(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, len(CLASSES) * N_ACTIONS)
        with torch.no_grad():
            self.proj.weight.mul_(0.1)
            self.proj.bias.copy_(torch.tensor([4.0, -4.0, -4.0] * len(CLASSES)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., width] -> logits [..., 2, 3] (softmax over the last axis)."""
        return self.proj(hidden).unflatten(-1, (len(CLASSES), N_ACTIONS))


class ReturnEmbedding(nn.Module):
    def __init__(self, width: int, hidden: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.mlp, self.norm = token_mlp(1, hidden, width), scaled_norm(width, scale)

    def forward(self, rtg: torch.Tensor) -> torch.Tensor:
        """[...] -> [..., width]"""
        return self.norm(self.mlp(rtg.unsqueeze(-1)))


class ActionEmbedding(nn.Module):
    """Probabilities are tiny most of the time, so the token sees them and their logs."""

    def __init__(self, width: int, hidden: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.mlp = token_mlp(2 * len(CLASSES) * N_ACTIONS, hidden, width)
        self.norm = scaled_norm(width, scale)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """[..., 2, 3] -> [..., width]"""
        flat = probs.flatten(-2)
        return self.norm(self.mlp(torch.cat([flat, torch.log10(flat + 1e-4) / 4 + 0.5], dim=-1)))
