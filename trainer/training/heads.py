"""The classifier head every trainer model ends in: pooled features (+ the cell type) -> logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cellio.errors import ConfigError

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    """features (+ cell-type one-hot) -> [MLP] -> logits; optionally one such head per cell type.

    With `per_cell_type`, every head runs on the whole batch and each row takes its own cell type's logits:
    every parameter gets a gradient each step (DDP needs no `find_unused_parameters`), at a cost that is small
    next to the backbone's.
    """

    def __init__(self, in_features: int, num_classes: int, *, num_cell_types: int, cell_type_input: bool = True,
                 per_cell_type: bool = False, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.num_cell_types = num_cell_types
        self.cell_type_input = cell_type_input
        self.per_cell_type = per_cell_type
        width = in_features + (num_cell_types if cell_type_input else 0)

        def body() -> nn.Module:
            if hidden > 0:
                return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

        self.heads = nn.ModuleList([body() for _ in range(num_cell_types if per_cell_type else 1)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        if (self.cell_type_input or self.per_cell_type) and cell_type is None:
            raise ConfigError("this model's head uses the cell type (cell_type_input or per_cell_type): pass the "
                              "loader's `cell_type` tensor to forward/forward_head")
        if self.cell_type_input:
            onehot = F.one_hot(cell_type.long(), self.num_cell_types).to(feats.dtype)
            feats = torch.cat([feats, onehot], dim=1)
        if not self.per_cell_type:
            return self.heads[0](feats)
        logits = torch.stack([h(feats) for h in self.heads], dim=1)           # (B, T, C)
        idx = cell_type.long().view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
        return logits.gather(1, idx).squeeze(1)
