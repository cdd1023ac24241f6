"""Checkpoints: one dict per file, written atomically; `load_for_inference` rebuilds the model from it.

A checkpoint holds `model` (state dict of the unwrapped model), `optimizer`, `scheduler`, `scaler`, `loader`
(the train loader's state_dict), `rng` (torch/numpy/python/cuda states), `config` (the resolved config as a
dict), `classes` (ClassMap dict), `epoch`, `step` and `metrics`. Run directory layout:

    OUT/checkpoints/last.pt   OUT/checkpoints/best.pt   OUT/config.yaml   OUT/metrics.csv   OUT/log.jsonl   OUT/tb/
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellio.errors import ConfigError
from cellio.schema import CELL_TYPES

from .config import Config
from .labels import ClassMap
from .models import create_model
from .runtime import rng_state, unwrap

__all__ = ["save_checkpoint", "load_checkpoint", "load_for_inference", "build_model", "training_state",
           "REQUIRED_KEYS"]

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "config", "classes")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file beside `path`, then os.replace: a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        # our own files: they carry numpy RNG state and plain dicts, which weights_only=True refuses
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"checkpoint {str(path)!r} is not readable by torch.load: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"checkpoint {str(path)!r}: expected keys {list(REQUIRED_KEYS)}, missing {missing}")
    return state


def training_state(model: nn.Module, opt: Any, sched: Any, scaler: Any, loader: Any, cfg: Config,
                   class_map: ClassMap, *, epoch: int, step: int, epoch_complete: bool,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything a resume needs (module docstring); `model` may be wrapped (DDP, compile, a stage's forward)."""
    return {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "loader": loader.state_dict() if loader is not None else None,
            "rng": rng_state(), "config": cfg.to_dict(), "classes": class_map.to_dict(), "epoch": epoch,
            "step": step, "epoch_complete": epoch_complete, "metrics": metrics}


def build_model(cfg: Config, class_map: ClassMap, *, pretrained: bool = True) -> nn.Module:
    """The model a config describes; `pretrained=False` skips the weights file (weights come from a checkpoint)."""
    return create_model(cfg.model.name, num_classes=len(class_map), in_chans=6, num_cell_types=len(CELL_TYPES),
                        pretrained=cfg.model.pretrained if pretrained else None, **cfg.model.kwargs)


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config, ClassMap]:
    """(model in eval mode on `device`, resolved Config, ClassMap) from a checkpoint written by trainer.train."""
    state = load_checkpoint(path, map_location="cpu")
    cfg = Config.from_dict(state["config"])
    class_map = ClassMap.from_dict(state["classes"])
    model = build_model(cfg, class_map, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: weights do not fit model {cfg.model.name!r} "
                          f"with {len(class_map)} classes: {exc}") from None
    log.info("loaded %s (%s, %d classes, step %s)", path, cfg.model.name, len(class_map), state.get("step"))
    return model.to(device).eval(), cfg, class_map
