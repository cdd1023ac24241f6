"""Losses over class indices (`labels.IGNORE_INDEX` rows are skipped): cross-entropy (default) or
one-vs-all BCE-with-logits, both with label smoothing; and an ArcFace/CosFace margin term on a normalised
cosine head (`CosineHead`, `MarginLoss`), mixed with the plain loss as the 1st place did (0.8 CE + 0.2 ArcFace;
the plain head predicts).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cellio.errors import ConfigError

from .labels import IGNORE_INDEX

__all__ = ["create_loss", "OneVsAllBCE", "CosineHead", "MarginLoss", "MARGINS"]

MARGINS = ("none", "arcface", "cosface")


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


class CosineHead(nn.Module):
    """Cosine similarity of L2-normalised features to L2-normalised class weights: (B, F) -> (B, C) in [-1, 1]."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(feats.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class MarginLoss(nn.Module):
    """Cross-entropy on `scale` x cosines with a margin on the true class: ArcFace cos(theta + m) or CosFace
    cos(theta) - m. Past theta = pi - m ArcFace falls back to cos(theta) - m sin(m) (insightface's rule), so
    the target logit keeps decreasing in theta."""

    def __init__(self, kind: str, margin: float, scale: float):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ConfigError(f"config key 'loss.margin': expected one of {MARGINS}, found {kind!r}")
        self.kind, self.margin, self.scale = kind, float(margin), float(scale)

    def forward(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE_INDEX
        if not bool(keep.any()):
            return cosine.sum() * 0.0
        cos, t = cosine[keep].clamp(-1 + 1e-7, 1 - 1e-7), target[keep]
        true = cos.gather(1, t[:, None])
        if self.kind == "arcface":
            m = self.margin
            sin = torch.sqrt(1.0 - true * true)
            shifted = true * math.cos(m) - sin * math.sin(m)
            shifted = torch.where(true > math.cos(math.pi - m), shifted, true - math.sin(math.pi - m) * m)
        else:
            shifted = true - self.margin
        logits = cos.scatter(1, t[:, None], shifted)
        return F.cross_entropy(self.scale * logits, t)
