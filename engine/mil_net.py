"""The attention-MIL network: torch at import, so apart from :mod:`engine.classifier`, which
imports torch only to train."""

from __future__ import annotations

import torch
from torch import nn

from engine.classifier import MilSettings


class AttentionMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018): instance embedding, gated attention pooling,
    a bag classifier. A one-patch bag scores that patch."""

    def __init__(self, dim: int, s: MilSettings) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, s.hidden), nn.ReLU(), nn.Dropout(s.dropout))
        self.v = nn.Linear(s.hidden, s.attention)
        self.u = nn.Linear(s.hidden, s.attention)
        self.w = nn.Linear(s.attention, 1)
        self.head = nn.Linear(s.hidden, 1)

    def forward(self, bags: torch.Tensor) -> torch.Tensor:  # (B, n, d) -> (B,) logits
        h = self.embed(bags)
        a = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)
        z = (torch.softmax(a, dim=1).unsqueeze(-1) * h).sum(1)
        return self.head(z).squeeze(-1)
