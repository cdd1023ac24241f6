"""AdaBN: BatchNorm statistics recomputed on each plate at prediction time.

Every plate of RxRx1 has its own batch effects. A model trained with plate-pure batches (`data.batch_by=plate`)
normalises each batch by that plate's statistics in training; at test time its running statistics are an average
over the training plates instead. Recomputing them on the plate being predicted (the 5th place's "AdaBN") puts
test activations back on the scale the model learned. Only BatchNorm buffers change, never a weight.

    states = plate_bn_states(model, stats_loader, device)      # one pass, plate-pure batches
    with bn_state(model, states[("HEPG2-08", 3)]):
        logits = model(x, cell_type)
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.training.runtime import in_model_layout

__all__ = ["bn_modules", "plate_bn_states", "bn_state", "PlateKey"]

PlateKey = tuple[str, int]  # (experiment, plate)


def bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm buffers (running mean/var, batch counter) of `model`, by qualified name."""
    names = {id(m) for m in bn_modules(model)}
    return {f"{mod_name}.{b}": t for mod_name, m in model.named_modules() if id(m) in names
            for b, t in m.named_buffers(recurse=False)}


@contextlib.contextmanager
def bn_state(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Use these BatchNorm buffers inside the block; the model's own come back after it."""
    own = {k: v.clone() for k, v in _buffers(model).items()}
    bufs = _buffers(model)
    for k, v in state.items():
        bufs[k].copy_(v)
    try:
        yield
    finally:
        for k, v in own.items():
            bufs[k].copy_(v)


@torch.no_grad()
def plate_bn_states(model: nn.Module, loader: Any, device: torch.device, sites: Any,
                    dtype: torch.dtype | None = None) -> dict[PlateKey, dict[str, torch.Tensor]]:
    """BatchNorm buffers estimated on each plate's sites (a loader with plate-pure batches, e.g.
    `create_loader(..., train=False, batch_by="plate")`): running mean/var as the average of the plate's batch
    statistics (momentum None). Dropout stays off; the model comes back unchanged."""
    work = copy.deepcopy(model).to(device)
    work.eval()
    norms = bn_modules(work)
    for m in norms:
        m.reset_running_stats()  # the counter must start at 0, or a plate's first batch weighs 1/steps trained
        m.momentum = None  # cumulative average over the plate's batches
    experiment = np.asarray(sites["experiment"])
    states: dict[PlateKey, dict[str, torch.Tensor]] = {}
    fresh = {k: v.clone() for k, v in _buffers(work).items()}
    current: PlateKey | None = None
    for batch in loader:
        index = batch["index"].numpy()
        key = (str(experiment[index[0]]), int(batch["plate"][0]))
        if key != current:  # plate-pure and unshuffled: a plate's batches come together
            if current is not None:
                states[current] = {k: v.clone() for k, v in _buffers(work).items()}
            _load(work, states.get(key, fresh))
            current = key
        for m in norms:
            m.train()
        x = in_model_layout(batch["image"].to(device), work)
        ct = batch["cell_type"].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            work(x, ct)
        for m in norms:
            m.eval()
    if current is not None:
        states[current] = {k: v.clone() for k, v in _buffers(work).items()}
    return {k: {n: t.to("cpu") for n, t in v.items()} for k, v in states.items()}


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    bufs = _buffers(model)
    for k, v in state.items():
        bufs[k].copy_(v)
