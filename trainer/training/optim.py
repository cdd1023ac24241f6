"""Optimizer, learning-rate schedule and the step arithmetic every stage shares.

    schedule = Schedule.create(cfg, batches_per_epoch=len(train_loader), grad_accum=stage.grad_accum(cfg))
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, schedule)      # linear warmup, then cosine to min_lr_ratio * lr
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cellio.errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Schedule", "build_optimizer", "build_scheduler"]


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps a run takes. Epoch e owns steps [e * steps_per_epoch, (e + 1) * steps_per_epoch),
    so a run stopped anywhere resumes at exactly the right batch."""

    steps_per_epoch: int
    total_steps: int
    grad_accum: int
    stop_at: int          # train.stop_at_step (a planned interruption) or total_steps

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_end(self, epoch: int) -> int:
        return (epoch + 1) * self.steps_per_epoch

    @classmethod
    def create(cls, cfg: "Config", batches_per_epoch: int, grad_accum: int) -> "Schedule":
        steps_per_epoch = batches_per_epoch // grad_accum
        if steps_per_epoch < 1:
            raise ConfigError(f"one epoch has {batches_per_epoch} batches per rank, fewer than "
                              f"optim.grad_accum={grad_accum}")
        total = cfg.train.max_steps or cfg.optim.epochs * steps_per_epoch
        return cls(steps_per_epoch, total, grad_accum, min(cfg.train.stop_at_step or total, total))


def build_optimizer(cfg: "Config", model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # norms and biases are not weight-decayed (standard for AdamW on conv nets)
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


def build_scheduler(cfg: "Config", opt: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine to min_lr_ratio * lr, over optimizer steps."""
    warmup = cfg.optim.warmup_steps or int(round(cfg.optim.warmup_epochs * schedule.steps_per_epoch))
    floor, total = cfg.optim.min_lr_ratio, schedule.total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
