"""Losses over class indices (`labels.IGNORE_INDEX` rows are skipped): cross-entropy (default) or
one-vs-all BCE-with-logits, both with label smoothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cellio.errors import ConfigError

from .labels import IGNORE_INDEX

__all__ = ["create_loss", "OneVsAllBCE"]


class OneVsAllBCE(nn.Module):
    """Independent sigmoid per class. Smoothed targets: 1 - eps + eps/C for the true class, eps/C elsewhere
    (the same mass cross-entropy's smoothing moves). Averaged over classes and labelled rows."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE_INDEX
        if not bool(keep.any()):
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive on an all-unlabelled batch
        logits, target = logits[keep], target[keep]
        num_classes = logits.shape[-1]
        onehot = F.one_hot(target, num_classes).to(logits.dtype)
        eps = self.label_smoothing
        soft = onehot * (1.0 - eps) + eps / num_classes
        return F.binary_cross_entropy_with_logits(logits, soft)


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)


def create_loss(name: str, label_smoothing: float = 0.0) -> nn.Module:
    """`ce` or `bce`; the module maps (logits (B, C), class indices (B,)) -> scalar loss."""
    if name == "ce":
        return CrossEntropy(label_smoothing)
    if name == "bce":
        return OneVsAllBCE(label_smoothing)
    raise ConfigError(f"config key 'loss.name': expected ce or bce, found {name!r}")
