"""The stage contract and the default stage: what a run trains, on which batches, and how a batch becomes
`(loss, scores)`.

The loop in trainer/training/loop.py is the same for every stage; a stage object owns everything that differs:

    stage = create_stage(cfg)                     # from train.stage (trainer/training/stages/__init__.py)
    stage.configure(model)                        # which parameters train (frozen ones never get gradients)
    train_loader, val_loader = stage.loaders(model, ctx)
    net = stage.forward_module(model)             # the module DDP / torch.compile wrap
    stage.train_mode(model)                       # model.train(), except what the stage keeps in eval mode
    out = stage.step(net, batch, ctx)             # StepOutput(loss, scores (B, C), target (B,))

`Stage` itself is train.stage=single: any model end to end (the winners' 6-channel DenseNet; a per-channel model
through its fusion head). The others: perchannel.py (per-channel extractors, the fusion head), pseudo.py
(pseudo-labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cellio.errors import ConfigError

from ..config import Config
from ..data import make_loader
from ..folds import FoldSplit
from ..labels import ClassMap
from ..models import is_perchannel
from ..runtime import Env
from ..within import ClassSets

__all__ = ["StageContext", "StageUpdate", "StepOutput", "Stage", "ModelForward", "model_inputs", "within_classes"]


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
    margin_fn: nn.Module | None = None   # loss.margin: the ArcFace/CosFace term on model.margin_head
    class_sets: ClassSets | None = None  # loss.within: each sample's classes (trainer/training/within.py)


@dataclass(frozen=True)
class StageUpdate:
    loader: Any                       # the train loader from now on
    event: dict[str, Any]             # what changed, for log.jsonl


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
        val = make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.val, train=False,
                          class_map=ctx.class_map) if ctx.split.val else None
        return make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.train, train=True, class_map=ctx.class_map), val

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _MarginForward(model) if hasattr(model, "margin_head") else model

    def train_mode(self, model: nn.Module, cfg: Config) -> None:
        """model.train(); with train.freeze_bn every BatchNorm keeps its running statistics."""
        model.train()
        if cfg.train.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, cell_type, target = model_inputs(batch, ctx)
        out = within_classes(net(x, cell_type), batch, ctx)
        if isinstance(out, tuple):  # _MarginForward: (logits, cosines); the plain head stays the prediction
            logits, cosine = out
            w = ctx.cfg.loss.margin_weight
            return StepOutput((1 - w) * ctx.loss_fn(logits, target) + w * ctx.margin_fn(cosine, target), logits,
                              target)
        return StepOutput(ctx.loss_fn(out, target), out, target)

    def summary(self) -> dict[str, Any]:
        """Stage-specific figures for the run's final metrics."""
        return {}

    def begin_epoch(self, net: nn.Module, epoch: int, schedule: Any, ctx: StageContext) -> StageUpdate | None:
        """Called before each epoch's first step (after a resume too); a stage whose data changes between epochs
        returns its new train loader. The loop forks the RNG around it, so a resumed run draws the same numbers."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs besides model and loaders (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], ctx: StageContext) -> Any | None:
        """Restore `state_dict()`; returns the train loader that state implies (or None: unchanged)."""
        return None


class ModelForward(nn.Module):
    """A stage's own forward around the model: the module DDP and torch.compile wrap; subclasses define forward."""

    wraps_model = True  # trainer.training.runtime.unwrap looks through it

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class _MarginForward(ModelForward):
    """forward = (head logits, margin-head cosines) from one features pass."""

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x, cell_type)
        return self.model.forward_head(feats, cell_type), self.model.margin_head(feats)


def within_classes(logits: Any, batch: dict[str, torch.Tensor], ctx: StageContext) -> Any:
    """`logits` restricted to each sample's classes under loss.within (unchanged without it); a margin forward's
    (logits, cosines) pair never reaches here with it (the config refuses the combination)."""
    if ctx.class_sets is None:
        return logits
    if "index" not in batch:
        raise ConfigError("config key 'loss.within': this stage's batches carry no store rows ('index') to find "
                          "each sample's classes")
    return ctx.class_sets.apply(logits, batch["index"])


def model_inputs(batch: dict[str, torch.Tensor], ctx: StageContext) -> tuple[torch.Tensor, ...]:
    """(images on the device, in the memory format training uses; cell types; class indices) of a batch."""
    x = batch["image"].to(ctx.env.device, non_blocking=True)
    if ctx.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cell_type = batch["cell_type"].to(ctx.env.device, non_blocking=True)
    return x, cell_type, ctx.class_map.encode(batch["label"].to(ctx.env.device))
