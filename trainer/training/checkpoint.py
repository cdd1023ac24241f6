"""Checkpoints: one dict per file, written atomically; `load_for_inference` rebuilds the model from it.

A checkpoint holds `model` (state dict of the unwrapped model), `optimizer`, `scheduler`, `scaler`, `loader`
(the train loader's state_dict), `rng` (torch/numpy/python/cuda states), `config` (the resolved config as a
dict), `classes` (ClassMap dict), `data` (`DataShape`: the input channels, the cell types and the layout name the
model was built for), `epoch`, `step` and `metrics`. A checkpoint without `data` (written before it existed) was
trained on RxRx1 and gets RxRx1's shape. Run directory layout:

    OUT/checkpoints/last.pt   OUT/checkpoints/best.pt   OUT/config.yaml   OUT/metrics.csv   OUT/log.jsonl   OUT/tb/
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import cellio
from cellio.errors import ConfigError, DiskFullError

from .config import Config
from .disk import free_bytes, is_disk_full, replaced_atomically, require_space
from .labels import ClassMap
from .layout import DEFAULT_LAYOUT, input_channels
from .losses import CosineHead
from .models import create_model
from .runtime import rng_state, unwrap

__all__ = ["save_checkpoint", "load_checkpoint", "load_for_inference", "build_model", "training_state",
           "check_resume_config", "apply_schedule_change", "REQUIRED_KEYS", "DataShape"]

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "config", "classes")


@dataclass(frozen=True)
class DataShape:
    """What a model is built for besides its config: the input channels, the cell types (the head's cell-type input
    and per-cell-type heads, in the loader's index order) and the name of the data set's layout."""

    in_chans: int
    cell_types: tuple[str, ...]
    layout: str

    @classmethod
    def of_store(cls, store: Any) -> "DataShape":
        """The shape of a store's images and layout (its channel count, its layout's cell types)."""
        layout = store.layout
        return cls(input_channels(store), tuple(layout.cell_types), str(layout.name))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DataShape":
        """A checkpoint's `data` entry; None (a checkpoint from before it was recorded): RxRx1's shape."""
        if d is None:
            rx = cellio.get_layout(DEFAULT_LAYOUT)
            return cls(rx.n_channels, tuple(rx.cell_types), rx.name)
        try:
            return cls(int(d["in_chans"]), tuple(str(c) for c in d["cell_types"]), str(d["layout"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint 'data' entry: expected in_chans, cell_types and layout, found {d!r} "
                              f"({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"in_chans": self.in_chans, "cell_types": list(self.cell_types), "layout": self.layout}


_FULL_HINT = "the previous checkpoint is intact; free some space and rerun the same command: training resumes from it"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file beside `path`, then os.replace: a crash never leaves a torn checkpoint.

    A full disk raises DiskFullError naming the file, the bytes needed and free: before the first byte when the
    state's tensors do not fit, or when the write itself fails (ENOSPC, or torch's own "unexpected pos" short
    write). The previous checkpoint at `path` is untouched, so the run resumes from it once there is space;
    temporary files left by a killed writer are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    needed = _estimated_bytes(state)
    require_space(path, needed, what="saving this checkpoint", hint=_FULL_HINT)
    try:
        # a Python file: a full disk raises ENOSPC itself, not torch's "unexpected pos"
        with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            raise DiskFullError(str(path), needed, free_bytes(path.parent),
                                what=f"saving this checkpoint (the write failed: {str(e).splitlines()[0]})",
                                hint=_FULL_HINT) from e
        raise
    return path


def _estimated_bytes(state: Any) -> int:
    """An upper bound of what torch.save writes for `state`: its tensors' and arrays' bytes, plus 512 bytes of zip
    records and pickled structure per tensor (measured: 308 on densenet_tiny, -121 and -161 checkpoints with their
    AdamW state, torch 2.14.1) and 64 KiB for the rest."""
    def walk(obj: Any) -> tuple[int, int]:  # (tensors, bytes)
        if isinstance(obj, torch.Tensor):
            return 1, obj.numel() * obj.element_size()
        if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):  # a numpy array (RNG states)
            return 1, int(obj.nbytes)
        parts = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        counts = [walk(v) for v in parts]
        return sum(c for c, _ in counts), sum(b for _, b in counts)

    tensors, nbytes = walk(state)
    return nbytes + 512 * tensors + (64 << 10)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.<pid>.tmp` files (disk.temporary_beside) whose writer process is gone (a SIGKILL mid-save
    leaves one behind)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not cellio.pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


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
                   class_map: ClassMap, shape: DataShape, *, epoch: int, step: int, epoch_complete: bool,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything a resume needs (module docstring); `model` may be wrapped (DDP, compile, a stage's forward)."""
    return {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "loader": loader.state_dict() if loader is not None else None,
            "rng": rng_state(), "config": cfg.to_dict(), "classes": class_map.to_dict(), "data": shape.to_dict(),
            "epoch": epoch,
            "step": step, "epoch_complete": epoch_complete, "metrics": metrics}


# What a resume may change. Execution keys never alter what is learned; schedule and logging keys alter the rest
# of the run and need train.allow_schedule_change; every other key (data selection, folds, augmentation, model,
# loss, stage, seed, and any key added later) is refused, because the weights would no longer mean what the
# config says (a changed data.val_fold would validate on experiments the run trained on).
_EXECUTION_KEYS = ("out", "data.num_workers", "data.backend", "data.val_batch_size", "train.device",
                   "train.num_threads", "train.amp", "train.channels_last", "train.compile", "train.stop_at_step",
                   "train.resume", "train.progress", "train.tensorboard", "train.allow_schedule_change")
_SCHEDULE_KEYS = ("optim.lr", "optim.weight_decay", "optim.momentum", "optim.warmup_steps", "optim.warmup_epochs",
                  "optim.epochs", "optim.min_lr_ratio", "optim.grad_clip", "train.max_steps", "train.log_every",
                  "train.ckpt_every", "train.val_every")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        # model.kwargs is a free mapping: compared as one value
        if isinstance(value, dict) and f"{prefix}{key}" != "model.kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(saved: dict[str, Any], cfg: Config, path: str | Path) -> list[str]:
    """The schedule/logging keys that differ between the checkpoint's config and `cfg` (allowed with
    train.allow_schedule_change); raises ConfigError naming every other differing key. Call it before anything
    of the run directory is overwritten."""
    old, new = _flatten(Config.from_dict(saved).to_dict()), _flatten(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in changed if k not in _EXECUTION_KEYS and k not in _SCHEDULE_KEYS]
    schedule = [k for k in changed if k in _SCHEDULE_KEYS]
    detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused + schedule)
    if refused:
        raise ConfigError(f"{path}: this run was trained with another config; resuming would change {detail}. "
                          f"Keys {refused} can never change on resume: use a new out= directory (or "
                          f"train.resume=false to start over there)")
    if schedule and not cfg.train.allow_schedule_change:
        raise ConfigError(f"{path}: resuming would change {detail}; pass train.allow_schedule_change=true to "
                          f"continue with the new values, or a new out= directory")
    return schedule


def apply_schedule_change(opt: torch.optim.Optimizer, sched: Any, cfg: Config) -> None:
    """After loading a checkpoint's optimizer and scheduler state: use cfg's peak lr, weight decay and momentum
    (the loaded state carries the old ones); warmup, cosine floor and length come from cfg's schedule already."""
    sched.base_lrs = [cfg.optim.lr for _ in opt.param_groups]
    factor = sched.lr_lambdas[0](sched.last_epoch)
    for i, group in enumerate(opt.param_groups):
        group["initial_lr"] = cfg.optim.lr
        group["lr"] = cfg.optim.lr * factor
        if i == 0:  # the decayed group (trainer.training.optim.build_optimizer); norms and biases stay at 0
            group["weight_decay"] = cfg.optim.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.optim.momentum


def build_model(cfg: Config, class_map: ClassMap, shape: DataShape, *, pretrained: bool = True) -> nn.Module:
    """The model a config describes for data of `shape` (its channels, its cell types); `pretrained=False` skips
    the weights file (weights come from a checkpoint). With loss.margin the model carries `margin_head` (a
    CosineHead on its pooled features), used by the loss only."""
    model = create_model(cfg.model.name, num_classes=len(class_map), in_chans=shape.in_chans,
                         num_cell_types=len(shape.cell_types),
                         pretrained=cfg.model.pretrained if pretrained else None, **cfg.model.kwargs)
    if cfg.loss.margin != "none":
        model.margin_head = CosineHead(model.num_features, len(class_map))
    return model


def load_for_inference(path: str | Path, device: str | torch.device = "cpu", *,
                       initial_weights: int | None = None) -> tuple[nn.Module, Config, ClassMap]:
    """(model in eval mode on `device`, resolved Config, ClassMap) from a checkpoint written by trainer.training.loop;
    the model is built for the checkpoint's `data` shape (RxRx1's for a checkpoint without one) and carries it as
    `model.data_shape`. `initial_weights=SEED` keeps the checkpoint's weights out: the same model freshly
    initialised under torch.manual_seed(SEED), with the checkpoint's config (its input normalisation included) —
    the untrained network of an ablation (docs/maps.md)."""
    state = load_checkpoint(path, map_location="cpu")
    cfg = Config.from_dict(state["config"])
    class_map = ClassMap.from_dict(state["classes"])
    shape = DataShape.from_dict(state.get("data"))
    if initial_weights is not None:
        torch.manual_seed(initial_weights)
    model = build_model(cfg, class_map, shape, pretrained=False)
    if initial_weights is None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {str(path)!r}: weights do not fit model {cfg.model.name!r} "
                              f"with {len(class_map)} classes and {shape.in_chans} input channels: {exc}") from None
    model.data_shape = shape
    log.info("loaded %s (%s, %d classes, step %s)%s", path, cfg.model.name, len(class_map), state.get("step"),
             "" if initial_weights is None else f": its initial weights (seed {initial_weights}), not the trained")
    model = model.to(device)
    if cfg.train.channels_last:  # inference in the layout the model trained in (trainer.training.runtime.in_model_layout)
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg, class_map
