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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


from .data import make_loader
from .labels import IGNORE_INDEX, ClassMap
from .runtime import Env

if TYPE_CHECKING:
    from .config import Config
    from .folds import FoldSplit

__all__ = ["FeatureSet", "FeatureLoader", "extract_features", "write_features", "read_features",
           "feature_cache_path", "cached_features"]

log = logging.getLogger(__name__)

_FORMAT = 1


@dataclass
class FeatureSet:
    features: np.ndarray   # (N, F) float32
    index: np.ndarray      # (N,) store rows
    label: np.ndarray      # (N,) raw sirna, -1 unknown
    cell_type: np.ndarray  # (N,) index into the layout's cell_types

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


def _fingerprint(cfg: "Config", class_map: ClassMap, split: "FoldSplit") -> dict[str, Any]:
    src = Path(cfg.train.init_from or "")
    stat = src.stat() if src.is_file() else None
    return {"init_from": str(src.resolve()), "init_size": stat.st_size if stat else None,
            "init_mtime_ns": stat.st_mtime_ns if stat else None, "store": str(Path(cfg.data.store).resolve()),
            "crop": cfg.data.val_crop_size or cfg.data.crop_size, "normalize": cfg.data.normalize,
            "augment": cfg.data.augment, "model": cfg.model.name, "kwargs": cfg.model.kwargs,
            "classes": len(class_map), "train": split.train, "val": split.val,
            # named labels: the vocabulary (the cached labels are its ids)
            **({"class_names": list(class_map.names)} if class_map.names is not None else {})}


def feature_cache_path(cfg: "Config") -> Path:
    return Path(cfg.out) / "features.zarr"


def cached_features(model: nn.Module, cfg: "Config", env: Env, store: Any, class_map: ClassMap, split: "FoldSplit",
                    dtype: torch.dtype | None) -> dict[str, FeatureSet]:
    """The frozen model's features of the train (and held-out) experiments: OUT/features.zarr when its fingerprint
    still holds, else computed by rank 0 (every site once, the centre view) and cached; every rank returns them."""
    cache = feature_cache_path(cfg)
    fingerprint = _fingerprint(cfg, class_map, split)
    sets = read_features(cache, fingerprint) if env.is_main else None
    if env.is_main and sets is None:
        t0 = time.perf_counter()
        single = env.single()  # rank 0 reads every site once
        train = make_loader(cfg, store, single, split.train, train=False, class_map=class_map)
        sets = {"train": extract_features(model, train, env.device, dtype, cfg.train.progress, "features train")}
        if split.val:
            val = make_loader(cfg, store, single, split.val, train=False, class_map=class_map)
            sets["val"] = extract_features(model, val, env.device, dtype, cfg.train.progress, "features val")
        write_features(cache, sets, fingerprint)
        log.info("cached %s features in %.1fs at %s", {k: v.features.shape for k, v in sets.items()},
                 time.perf_counter() - t0, cache)
    if env.distributed:
        dist.barrier()
    if not env.is_main:
        sets = read_features(cache, fingerprint)
    assert sets is not None
    return sets


class FeatureLoader:
    """Batches of cached features, loader-like (`len`, `set_epoch`, `state_dict`), on one device.

    train: each epoch a permutation of the labelled rows from one torch.Generator seeded once (epoch e is its
    e-th draw, so an epoch's order depends only on the seed), `global_batch` rows per step of which this rank
    takes every world_size-th, a ragged tail dropped. eval: every row once, this rank's share, in order.
    Batches are dicts with `features`, `cell_type` and `label` (raw sirna) like the image loader's.
    """

    def __init__(self, fs: FeatureSet, class_map: ClassMap, device: torch.device, *, train: bool,
                 global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        self.train, self.global_batch, self.seed = train, int(global_batch), int(seed)
        self.rank, self.world_size = rank, world_size
        self.features = torch.from_numpy(fs.features).to(device)
        self.cell_type = torch.from_numpy(fs.cell_type).to(device)
        self.label = torch.from_numpy(fs.label).to(device)
        labelled = class_map.encode(self.label) != IGNORE_INDEX
        self.rows = torch.nonzero(labelled).flatten() if train else torch.arange(len(fs), device=device)
        self.epoch, self.batch = 0, 0
        self._resume: int | None = None

    def __len__(self) -> int:
        if self.train:
            return max(1, len(self.rows) // self.global_batch)
        return -(-len(self.rows[self.rank::self.world_size]) // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch, self._resume = int(epoch), 0, None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "rows": len(self.rows), "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch, self._resume = int(state["epoch"]), int(state["batch"]), int(state["batch"])

    def _order(self) -> torch.Tensor:
        if not self.train:
            return self.rows[self.rank::self.world_size]
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):
            torch.randperm(len(self.rows), generator=gen)
        return self.rows[torch.randperm(len(self.rows), generator=gen).to(self.rows.device)]

    def __iter__(self) -> Any:
        order, start = self._order(), self._resume or 0
        self._resume = None
        for b in range(start, len(self)):
            rows = order[b * self.global_batch:(b + 1) * self.global_batch]
            if self.train:
                rows = rows[self.rank::self.world_size]
            self.batch = b + 1
            yield {"features": self.features[rows], "cell_type": self.cell_type[rows], "label": self.label[rows]}
        self.epoch, self.batch = self.epoch + 1, 0
