"""Stages of a per-channel model (trainer.training.models: six extractors, one per channel, and a fusion head).

  perchannel_stage1  the six extractors, each with its own classifier on its own channel; the scores are the mean
                     of the six classifiers' probabilities.
  fusion_stage2      the fusion head on stage-1 extractors (train.init_from). With frozen extractors and
                     train.cache_features the features are computed once (OUT/features.zarr) and the head trains
                     on them in seconds (`CachedFusionHead`); otherwise on images (`FusionHead`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cellio.errors import ConfigError

from ..config import Config
from ..features import FeatureLoader, cached_features, feature_cache_path
from ..models import is_perchannel
from .base import ModelForward, Stage, StageContext, StepOutput, model_inputs, within_classes

__all__ = ["PerChannelStage1", "FusionHead", "CachedFusionHead", "fusion_stage"]


class _ChannelsForward(ModelForward):
    """forward = the per-channel classifiers, (B, channels, classes)."""

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_channels(x)


class PerChannelStage1(Stage):
    name = "perchannel_stage1"

    def configure(self, model: nn.Module) -> None:
        _require_perchannel(model, self.name)
        model.head.requires_grad_(False)  # stage 1 trains extractors + their own channel heads

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _ChannelsForward(model)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, _, target = model_inputs(batch, ctx)
        logits = within_classes(net(x), batch, ctx)  # (B, channels, classes)
        loss = torch.stack([ctx.loss_fn(logits[:, c], target) for c in range(logits.shape[1])]).mean()
        return StepOutput(loss, logits.float().softmax(-1).mean(1), target)


class FusionHead(Stage):
    """fusion_stage2 on images: the fusion head, with the extractors frozen (train.freeze_extractors) or not."""

    name = "fusion_stage2"

    def __init__(self, freeze_extractors: bool):
        self.freeze_extractors = freeze_extractors

    def configure(self, model: nn.Module) -> None:
        _require_perchannel(model, self.name)
        model.channel_heads.requires_grad_(False)
        if self.freeze_extractors:
            model.extractors.requires_grad_(False)

    def train_mode(self, model: nn.Module, cfg: Config) -> None:
        super().train_mode(model, cfg)
        if self.freeze_extractors:  # frozen extractors keep their BatchNorm statistics too
            model.extractors.eval()


class _HeadForward(ModelForward):
    """forward = the fusion head on cached features."""

    def forward(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_head(feats, cell_type)


class CachedFusionHead(FusionHead):
    """fusion_stage2 with frozen extractors on features computed once: the head's global batch is
    data.batch_size x optim.grad_accum x world_size rows, one optimizer step per batch."""

    def __init__(self) -> None:
        super().__init__(freeze_extractors=True)
        self._summary: dict[str, Any] = {}

    def grad_accum(self, cfg: Config) -> int:
        return 1

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        cfg, env = ctx.cfg, ctx.env
        sets = cached_features(model, cfg, env, ctx.store, ctx.class_map, ctx.split, ctx.dtype)
        self._summary = {"cached_features": str(feature_cache_path(cfg)),
                         "feature_train_rows": len(sets["train"])}
        global_batch = cfg.data.batch_size * cfg.optim.grad_accum * env.world_size
        common = {"rank": env.rank, "world_size": env.world_size, "seed": cfg.train.seed}
        train = FeatureLoader(sets["train"], ctx.class_map, env.device, train=True, global_batch=global_batch,
                              **common)
        val = FeatureLoader(sets["val"], ctx.class_map, env.device, train=False, global_batch=4096, **common) \
            if "val" in sets else None
        return train, val

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _HeadForward(model)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        target = ctx.class_map.encode(batch["label"])
        logits = net(batch["features"], batch["cell_type"])
        return StepOutput(ctx.loss_fn(logits, target), logits, target)


def _require_perchannel(model: nn.Module, stage: str) -> None:
    if not is_perchannel(model):
        raise ConfigError(f"config key 'train.stage': {stage} needs a per-channel model (e.g. perchannel_tiny), "
                          f"found {type(model).__name__}")


def fusion_stage(cfg: Config) -> Stage:
    """train.stage=fusion_stage2: on cached features when the extractors are frozen and train.cache_features."""
    if cfg.train.freeze_extractors and cfg.train.cache_features:
        return CachedFusionHead()
    return FusionHead(cfg.train.freeze_extractors)
