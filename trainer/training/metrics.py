"""Accuracy and loss over labelled rows, overall and per cell type, summed over ranks. One home for the numbers
`metrics.csv`, `log.jsonl` and the checkpoints carry.

    meter = ClassificationMeter(store.layout.cell_types)
    for batch in loader:
        out = stage.step(net, batch, ctx)
        meter.update(out.scores, out.target, batch["cell_type"], out.loss)
    meter.summary(env, num_classes)      # {"val_loss", "val_acc", "val_n", "chance", "val_acc_<cell type>", ...}
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .labels import IGNORE_INDEX
from .runtime import Env, all_reduce_sum

__all__ = ["ClassificationMeter", "TrainWindow"]


class ClassificationMeter:
    """Hits and labelled rows per cell type (`cell_types`: the layout's, in the order of the loader's `cell_type`
    indices), and the loss weighted by labelled rows."""

    def __init__(self, cell_types: Sequence[str]) -> None:
        self.cell_types = tuple(cell_types)
        n = len(self.cell_types)
        self.correct = torch.zeros(n, dtype=torch.float64)
        self.total = torch.zeros(n, dtype=torch.float64)
        self.loss_sum = torch.zeros(1, dtype=torch.float64)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, target: torch.Tensor, cell_type: torch.Tensor,
               loss: torch.Tensor | float) -> None:
        """`scores` (B, C) whose argmax is the prediction; `target` class indices (IGNORE_INDEX = unlabelled)."""
        keep = (target != IGNORE_INDEX).cpu()
        hit = (scores.argmax(-1).cpu() == target.cpu()) & keep
        ct = cell_type.cpu()
        n = len(self.cell_types)
        self.correct += torch.bincount(ct[keep], weights=hit[keep].double(), minlength=n)
        self.total += torch.bincount(ct[keep], minlength=n).double()
        self.loss_sum += float(loss) * int(keep.sum())

    def summary(self, env: Env, num_classes: int, prefix: str = "val_") -> dict[str, float]:
        n_types = len(self.cell_types)
        stats = all_reduce_sum(torch.cat([self.correct, self.total, self.loss_sum]), env)
        correct, total, loss_sum = stats[:n_types], stats[n_types:2 * n_types], stats[-1]
        n = float(total.sum())
        out = {f"{prefix}loss": float(loss_sum) / max(n, 1.0), f"{prefix}acc": float(correct.sum()) / max(n, 1.0),
               f"{prefix}n": n, "chance": 1.0 / num_classes}
        for i, name in enumerate(self.cell_types):
            out[f"{prefix}acc_{name}"] = float(correct[i] / total[i]) if total[i] > 0 else float("nan")
        return out


class TrainWindow:
    """Training loss (mean per optimizer step) and accuracy since the last log line."""

    def __init__(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # loss per step, hits, labelled rows
        self.steps = 0

    @torch.no_grad()
    def add_micro_batch(self, loss: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, accum: int) -> None:
        keep = target != IGNORE_INDEX
        hits = int(((scores.argmax(-1) == target) & keep).sum())
        self.sums += torch.tensor([float(loss.detach()) / accum, hits, int(keep.sum())], dtype=torch.float64)

    def end_step(self) -> None:
        self.steps += 1

    def flush(self, env: Env) -> dict[str, Any]:
        """{"loss", "acc"} over every rank's rows since the last flush; resets the window."""
        totals = all_reduce_sum(self.sums.clone(), env)  # mean over ranks: the global batch's loss
        out = {"loss": float(totals[0]) / (max(self.steps, 1) * env.world_size),
               "acc": float(totals[1]) / max(float(totals[2]), 1.0)}
        self.sums.zero_()
        self.steps = 0
        return out
