"""Training stages: what a run trains, on which batches, and how a batch becomes `(loss, scores)`.

The loop in trainer/train.py is the same for every stage; a stage object owns everything that differs:

    stage = create_stage(cfg)                     # from train.stage (STAGES)
    stage.configure(model)                        # which parameters train (frozen ones never get gradients)
    train_loader, val_loader = stage.loaders(model, ctx)
    net = stage.forward_module(model)             # the module DDP / torch.compile wrap
    stage.train_mode(model)                       # model.train(), except what the stage keeps in eval mode
    out = stage.step(net, batch, ctx)             # StepOutput(loss, scores (B, C), target (B,))

Stages:
  single             any model end to end (the winners' 6-channel DenseNet; a per-channel model through its
                     fusion head).
  perchannel_stage1  a per-channel model's six extractors, each with its own classifier on its own channel; the
                     scores are the mean of the six classifiers' probabilities.
  fusion_stage2      the fusion head on stage-1 extractors (train.init_from). With frozen extractors and
                     train.cache_features the features are computed once (OUT/features.zarr) and the head trains
                     on them in seconds (`CachedFusionHead`); otherwise on images (`FusionHead`).

A new training mode (pseudo-labels, say) is one new class registered in `_STAGES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from cellio.errors import ConfigError

from .config import Config
from .data import make_loader
from .features import FeatureLoader, cached_features, feature_cache_path
from .folds import FoldSplit
from .labels import ClassMap
from .models import is_perchannel
from .runtime import Env

__all__ = ["StageContext", "StepOutput", "Stage", "create_stage"]


@dataclass(frozen=True)
class StageContext:
    """What a stage may read: the config, the process, the data and the loss."""

    cfg: Config
    env: Env
    store: Any
    class_map: ClassMap
    split: FoldSplit
    loss_fn: nn.Module
    dtype: torch.dtype | None


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    scores: torch.Tensor   # (B, C): argmax is the prediction
    target: torch.Tensor   # (B,) class indices, IGNORE_INDEX for unlabelled rows


class Stage:
    """The default: the whole model trains on augmented images of the train experiments."""

    name = "single"

    def configure(self, model: nn.Module) -> None:
        if is_perchannel(model):
            model.channel_heads.requires_grad_(False)  # stage 1's classifiers: end to end through the fusion head

    def grad_accum(self, cfg: Config) -> int:
        return cfg.optim.grad_accum

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        val = make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.val, train=False) if ctx.split.val else None
        return make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.train, train=True), val

    def forward_module(self, model: nn.Module) -> nn.Module:
        return model

    def train_mode(self, model: nn.Module, cfg: Config) -> None:
        """model.train(); with train.freeze_bn every BatchNorm keeps its running statistics."""
        model.train()
        if cfg.train.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, cell_type, target = _inputs(batch, ctx)
        logits = net(x, cell_type)
        return StepOutput(ctx.loss_fn(logits, target), logits, target)

    def summary(self) -> dict[str, Any]:
        """Stage-specific figures for the run's final metrics."""
        return {}


class _ChannelsForward(nn.Module):
    """forward = the per-channel classifiers, (B, channels, classes); DDP and compile wrap this forward."""

    wraps_model = True  # trainer.runtime.unwrap looks through it

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

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
        x, _, target = _inputs(batch, ctx)
        logits = net(x)  # (B, channels, classes)
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


class _HeadForward(nn.Module):
    """forward = the fusion head on cached features; DDP and compile wrap this forward."""

    wraps_model = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

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


def _inputs(batch: dict[str, torch.Tensor], ctx: StageContext) -> tuple[torch.Tensor, ...]:
    x = batch["image"].to(ctx.env.device, non_blocking=True)
    if ctx.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cell_type = batch["cell_type"].to(ctx.env.device, non_blocking=True)
    return x, cell_type, ctx.class_map.encode(batch["label"].to(ctx.env.device))


def _require_perchannel(model: nn.Module, stage: str) -> None:
    if not is_perchannel(model):
        raise ConfigError(f"config key 'train.stage': {stage} needs a per-channel model (e.g. perchannel_tiny), "
                          f"found {type(model).__name__}")


def _fusion_stage(cfg: Config) -> Stage:
    if cfg.train.freeze_extractors and cfg.train.cache_features:
        return CachedFusionHead()
    return FusionHead(cfg.train.freeze_extractors)


# train.stage -> the stage it builds (config.STAGES lists these names)
_STAGES: dict[str, Callable[[Config], Stage]] = {
    "single": lambda cfg: Stage(),
    "perchannel_stage1": lambda cfg: PerChannelStage1(),
    "fusion_stage2": _fusion_stage,
}


def create_stage(cfg: Config) -> Stage:
    """The stage object for train.stage (for fusion_stage2 also train.freeze_extractors / cache_features)."""
    factory = _STAGES.get(cfg.train.stage)
    if factory is None:
        raise ConfigError(f"config key 'train.stage': unknown stage {cfg.train.stage!r}; expected one of "
                          f"{', '.join(_STAGES)}")
    return factory(cfg)
