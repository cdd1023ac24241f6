"""Stage 2 on frozen extractors: features computed once, cached in a Zarr group, the fusion head trained on them.

With frozen per-channel extractors the expensive part of every step never changes, so `forward_features` runs
once per site (deterministic centre view, the loader's train=False mode) and the head then trains on the cached
(N, F) matrix in seconds. The cache, OUT/features.zarr, holds per split `{split}/features` (N, F) float32,
`{split}/index` (store rows), `{split}/label` (raw sirna) and `{split}/cell_type`; its attributes carry a
fingerprint (stage-1 checkpoint, store, crop, normalization, model) and a stale cache is rebuilt, never reused.
The result is still ONE checkpoint holding extractors + head (load_for_inference works on it).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cellio.schema import CELL_TYPES

from .checkpoint import save_checkpoint
from .labels import IGNORE_INDEX, ClassMap

if TYPE_CHECKING:
    from .config import Config
    from .train import Env, RunLog

__all__ = ["FeatureSet", "extract_features", "write_features", "read_features", "train_head_on_cached_features"]

log = logging.getLogger(__name__)

_FORMAT = 1


@dataclass
class FeatureSet:
    features: np.ndarray   # (N, F) float32
    index: np.ndarray      # (N,) store rows
    label: np.ndarray      # (N,) raw sirna, -1 unknown
    cell_type: np.ndarray  # (N,) index into CELL_TYPES

    def __len__(self) -> int:
        return len(self.index)


@torch.no_grad()
def extract_features(model: nn.Module, loader: Any, device: torch.device, dtype: torch.dtype | None = None,
                     progress: bool = False, desc: str = "features") -> FeatureSet:
    """model.forward_features over every batch of `loader` (model in eval mode)."""
    from tqdm.auto import tqdm

    model.eval()
    feats, index, label, ctype = [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        x = batch["image"].to(device)
        ct = batch["cell_type"].to(device)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type,
                                                                                                 enabled=False)
        with ctx:
            f = model.forward_features(x, ct)
        feats.append(f.float().cpu().numpy())
        index.append(batch["index"].numpy())
        label.append(batch["label"].numpy())
        ctype.append(batch["cell_type"].numpy())
    width = getattr(model, "num_features", 0)
    return FeatureSet(np.concatenate(feats) if feats else np.zeros((0, width), np.float32),
                      np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64),
                      np.concatenate(label).astype(np.int64) if label else np.zeros(0, np.int64),
                      np.concatenate(ctype).astype(np.int64) if ctype else np.zeros(0, np.int64))


def write_features(path: str | Path, sets: dict[str, FeatureSet], fingerprint: dict[str, Any]) -> None:
    """Write every split, then the fingerprint last: a cache without one (a crash mid-write) is never reused."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for split, fs in sets.items():
        g = group.create_group(split)
        rows = max(1, min(len(fs), 4096))
        g.create_array("features", shape=fs.features.shape, chunks=(rows, fs.features.shape[1]),
                       dtype="float32")[:] = fs.features
        for name in ("index", "label", "cell_type"):
            g.create_array(name, shape=(len(fs),), chunks=(max(1, len(fs)),), dtype="int64")[:] = getattr(fs, name)
    group.attrs.update({"format": _FORMAT, "fingerprint": fingerprint, "splits": sorted(sets)})


def read_features(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, FeatureSet] | None:
    """The cached splits if the cache exists and matches `fingerprint`, else None."""
    import zarr

    if not Path(path).exists():
        return None
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt
        return None
    if attrs.get("format") != _FORMAT or attrs.get("fingerprint") != fingerprint:
        log.info("feature cache %s is stale (fingerprint differs); recomputing", path)
        return None
    return {split: FeatureSet(group[f"{split}/features"][:], group[f"{split}/index"][:],
                              group[f"{split}/label"][:], group[f"{split}/cell_type"][:])
            for split in attrs["splits"]}


def _fingerprint(cfg: "Config", class_map: ClassMap, train_exps: list[str], val_exps: list[str]) -> dict[str, Any]:
    src = Path(cfg.train.init_from or "")
    stat = src.stat() if src.is_file() else None
    return {"init_from": str(src.resolve()), "init_size": stat.st_size if stat else None,
            "init_mtime_ns": stat.st_mtime_ns if stat else None, "store": str(Path(cfg.data.store).resolve()),
            "crop": cfg.data.val_crop_size or cfg.data.crop_size, "normalize": cfg.data.normalize,
            "augment": cfg.data.augment, "model": cfg.model.name, "kwargs": cfg.model.kwargs,
            "classes": len(class_map), "train": train_exps, "val": val_exps}


def _head_metrics(model: nn.Module, fs: FeatureSet, class_map: ClassMap, loss_fn: nn.Module,
                  device: torch.device, batch: int = 4096) -> dict[str, float]:
    model.eval()
    n_types = len(CELL_TYPES)
    correct, total, loss_sum = np.zeros(n_types), np.zeros(n_types), 0.0
    with torch.no_grad():
        for s in range(0, len(fs), batch):
            f = torch.from_numpy(fs.features[s:s + batch]).to(device)
            ct = torch.from_numpy(fs.cell_type[s:s + batch]).to(device)
            target = class_map.encode(torch.from_numpy(fs.label[s:s + batch]).to(device))
            logits = model.forward_head(f, ct)
            keep = (target != IGNORE_INDEX).cpu().numpy()
            hit = (logits.argmax(-1) == target).cpu().numpy() & keep
            cts = fs.cell_type[s:s + batch]
            np.add.at(correct, cts[keep], hit[keep])
            np.add.at(total, cts[keep], 1)
            loss_sum += float(loss_fn(logits, target)) * int(keep.sum())
    n = float(total.sum())
    out = {"val_loss": loss_sum / max(n, 1.0), "val_acc": float(correct.sum()) / max(n, 1.0), "val_n": n,
           "chance": 1.0 / len(class_map)}
    for i, name in enumerate(CELL_TYPES):
        out[f"val_acc_{name}"] = float(correct[i] / total[i]) if total[i] else float("nan")
    return out


def train_head_on_cached_features(model: nn.Module, cfg: "Config", env: "Env", store: Any, class_map: ClassMap,
                                  train_exps: list[str], val_exps: list[str], loss_fn: nn.Module, runlog: "RunLog",
                                  dtype: torch.dtype | None) -> dict[str, Any]:
    """fusion_stage2 with frozen extractors: cache features (rank 0), train model.head on them, checkpoint."""
    from .train import Env, _checkpoint_state, build_optimizer, build_scheduler, make_loader, record_validation

    out = Path(cfg.out)
    cache = out / "features.zarr"
    fingerprint = _fingerprint(cfg, class_map, train_exps, val_exps)
    if env.is_main:
        sets = read_features(cache, fingerprint)
        if sets is None:
            t0 = time.perf_counter()
            single = Env(0, 1, env.local_rank, env.device)  # rank 0 reads every site once
            sets = {"train": extract_features(model, make_loader(cfg, store, single, train_exps, train=False),
                                              env.device, dtype, cfg.train.progress, "features train")}
            if val_exps:
                sets["val"] = extract_features(model, make_loader(cfg, store, single, val_exps, train=False),
                                               env.device, dtype, cfg.train.progress, "features val")
            write_features(cache, sets, fingerprint)
            log.info("cached %s features in %.1fs at %s", {k: v.features.shape for k, v in sets.items()},
                     time.perf_counter() - t0, cache)
    if env.distributed:
        dist.barrier()
    if not env.is_main:
        sets = read_features(cache, fingerprint)
    assert sets is not None

    # every rank trains the same head on the same features (seconds): no gradient exchange is needed
    train = sets["train"]
    x_all = torch.from_numpy(train.features).to(env.device)
    ct_all = torch.from_numpy(train.cell_type).to(env.device)
    y_all = class_map.encode(torch.from_numpy(train.label).to(env.device))
    labelled = torch.nonzero(y_all != IGNORE_INDEX).flatten()
    bs = cfg.data.batch_size * cfg.optim.grad_accum * env.world_size  # the same global batch as the image loop
    steps_per_epoch = max(1, len(labelled) // bs)
    total_steps = cfg.train.max_steps or cfg.optim.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=False)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    step, best, metrics, t0 = 0, -1.0, {}, time.perf_counter()
    ckpt_dir = out / "checkpoints"
    for epoch in range(epochs):
        model.train()
        model.extractors.eval()
        perm = labelled[torch.randperm(len(labelled), generator=gen).to(env.device)]
        losses = []
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            rows = perm[b * bs:(b + 1) * bs]
            loss = loss_fn(model.forward_head(x_all[rows], ct_all[rows]), y_all[rows])
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.head.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        metrics.update(train_loss=float(np.mean(losses)) if losses else float("nan"))
        runlog.event("train", step, epoch=epoch, loss=metrics["train_loss"], lr=sched.get_last_lr()[0])
        if "val" in sets and ((epoch + 1) % cfg.train.val_every == 0 or epoch == epochs - 1):
            val = _head_metrics(model, sets["val"], class_map, loss_fn, env.device)
            best = record_validation(
                val, metrics, best, runlog=runlog, step=step, epoch=epoch, is_main=env.is_main,
                row={"lr": sched.get_last_lr()[0], "elapsed_s": time.perf_counter() - t0},
                best_path=ckpt_dir / "best.pt",
                state=lambda: _checkpoint_state(model, opt, sched, scaler, None, cfg, class_map, epoch, step, True,
                                                metrics))
    if env.is_main:
        save_checkpoint(ckpt_dir / "last.pt", _checkpoint_state(model, opt, sched, scaler, None, cfg, class_map,
                                                                epochs - 1, step, True, metrics))
    metrics.update(step=step, epoch=epochs - 1, stopped_early=False, num_classes=len(class_map),
                   cached_features=str(cache), feature_train_rows=len(train))
    if env.distributed:
        dist.barrier()
    return metrics
