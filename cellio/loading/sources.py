"""The sample source shared by both backends: rank order -> per-sample parameters -> windows read from the store.

:class:`SiteSource` is a stateless, picklable callable for DALI's
``fn.external_source(source, batch=True, batch_info=True, parallel=True)``: given ``BatchInfo(iteration,
epoch_idx)`` it returns one batch (the rank's positions ``[i*B, (i+1)*B)`` of the epoch order), and keeps raising
``StopIteration`` past the end. It is batch-mode on purpose: with ``batch=False`` DALI silently drops a partial last
batch, which would break "every sample exactly once". The torch backend calls the same :meth:`SiteSource.batch`,
so both backends read the same windows with the same parameters.

The random parameters of a sample are keyed on (seed, epoch, its global position in the epoch order), never on a
worker's state, so results do not depend on worker count, scheduling, rank count or the resume point.
"""
from __future__ import annotations

import copyreg
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PipelineConfigError
from .sampling import ShardedSampler
from .streaming import StreamReader, StreamSampler
from .transforms import (MIN_BLUR_SIGMA, AugmentConfig, blur_window, epoch_params, eval_params, field_coords,
                         noise_windows, normalization_affine, warp_matrices)

__all__ = ["META_FIELDS", "SiteMeta", "SourceBatch", "SiteSource"]

log = logging.getLogger(__name__)

# Columns of the per-sample int64 "meta" vector, in this order.
META_FIELDS: tuple[str, ...] = ("label", "cell_type", "index", "view", "site", "plate")


@dataclass(frozen=True)
class SiteMeta:
    """Per selected site (row j of the loader's filtered table): store row, label (-1 unknown), cell type index,
    site (field within the well), plate (its number, or its index among the store's sorted plate names), and the
    normalization statistics (the data's grey levels) of the chosen level, one column per loaded channel."""

    rows: np.ndarray        # int64 (m,)
    label: np.ndarray       # int64 (m,)
    cell_type: np.ndarray   # int64 (m,)
    site: np.ndarray        # int64 (m,)
    plate: np.ndarray       # int64 (m,)
    mean: np.ndarray        # float32 (m, C)
    std: np.ndarray         # float32 (m, C)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class SourceBatch:
    """One batch before augmentation: read windows and everything needed to augment and label them."""

    windows: list[np.ndarray] | np.ndarray  # uint8/uint16 (B, h, w, C) or a list of (h_i, w_i, C) (resized crops)
    params: dict[str, np.ndarray]           # make_params layout, leading B
    mean: np.ndarray                        # float32 (B, C) channel statistics (grey levels) of each sample
    std: np.ndarray
    meta: np.ndarray                        # int64 (B, len(META_FIELDS))

    def __len__(self) -> int:
        return len(self.meta)


class SiteSource:
    """Reads the batches of one rank's epoch from a store.

    store: a cellio Store (pickles by path, reopens lazily in each worker). sampler: the rank's ShardedSampler over
    items; an item is (selected site j, view id) with j = item // len(views). train=True draws random parameters
    from cfg; train=False uses the deterministic TTA views. first_epoch / start_batch: the epoch the pipeline's
    first DALI epoch (BatchInfo.epoch_idx 0) stands for, and how many batches of it were already consumed
    (resume); later DALI epochs are first_epoch + epoch_idx from batch 0. outputs: the columns a DALI call returns
    (only those the graph uses, see cellio.loading.pipeline.source_outputs). channels: the store indices of the
    channels to load, in output order (None: all; `Store.channel_indices`); meta's statistics are of those.
    """

    def __init__(self, store: Any, cfg: AugmentConfig, sampler: ShardedSampler, meta: SiteMeta, *, train: bool,
                 views: np.ndarray, tta: str | None, first_epoch: int = 0, start_batch: int = 0,
                 outputs: tuple[str, ...] = ("image", "matrix", "mean", "std", "meta"),
                 channels: np.ndarray | None = None):
        if sampler.n != len(meta) * len(views):
            raise PipelineConfigError(f"SiteSource: sampler covers {sampler.n} items, expected "
                                      f"{len(meta)} sites x {len(views)} views = {len(meta) * len(views)}")
        self.store = store
        self.cfg = cfg
        self.sampler = sampler
        self.meta = meta
        self.train = bool(train)
        self.views = np.asarray(views, dtype=np.int64)
        self.tta = tta
        self.first_epoch = int(first_epoch)
        self.start_batch = int(start_batch)
        self.outputs = tuple(outputs)
        self.image_hw = tuple(int(v) for v in store.image_shape[:2])
        self.pick = None if channels is None else np.asarray(channels, dtype=np.int64)
        # the channels loaded: the store's (its layout's), or those picked
        self.channels = int(store.image_shape[2]) if self.pick is None else len(self.pick)
        if meta.mean.shape[1:] != (self.channels,):
            raise PipelineConfigError(f"SiteSource: statistics of {meta.mean.shape[1:]} channels, expected "
                                      f"{self.channels}")
        self.max_value = int(store.layout.max_value)  # the pixel type's top: grey levels scale to it
        # output size: the crop, or the whole site for tta="full"
        self.out_hw: tuple[int, int] = self.image_hw if (not self.train and tta == "full") \
            else (cfg.crop_size, cfg.crop_size)
        self._cache: tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray] | None, np.ndarray] | None = None
        # stream mode (a StreamSampler): whole units fetched per window, per process
        self._stream: StreamReader | None = StreamReader(store) if isinstance(sampler, StreamSampler) else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # workers rebuild the order themselves
        return state  # (a StreamReader pickles empty)

    # -- order -----------------------------------------------------------------------------------------------------
    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, global positions) of this rank for `epoch`, memoised (a worker serves many batches of one epoch)."""
        self._prepare(epoch)
        return self._cache[1], self._cache[2]

    def _prepare(self, epoch: int) -> None:
        if self._cache is None or self._cache[0] != epoch:
            items, pos = self.sampler.rank_order(epoch)
            params = None
            if self.train:  # this rank's draws, keyed on global positions (see transforms.epoch_params)
                params = epoch_params(self.cfg, self.sampler.seed, epoch, pos, self.image_hw, self.channels,
                                      self.max_value)
            self._cache = (epoch, items, pos, params, self.sampler.batch_bounds(epoch))

    def num_batches(self) -> int:
        return self.sampler.num_batches()

    # -- reading ---------------------------------------------------------------------------------------------------
    def batch(self, epoch: int, batch_index: int) -> SourceBatch | None:
        """Batch `batch_index` of this rank's `epoch` (None past the end)."""
        if batch_index < 0 or batch_index >= self.num_batches():
            return None
        items, pos = self.order(epoch)
        start, stop = self._cache[4][batch_index]
        sel = slice(int(start), int(stop))
        items, pos = items[sel], pos[sel]
        rank_params = self._cache[3]
        nv = len(self.views)
        j = items // nv
        views = self.views[items % nv]
        if self.train:
            params = {k: v[sel] for k, v in rank_params.items()}
        else:
            params = eval_params(self.cfg, views, self.image_hw, self.tta or "center", self.channels)
        rows = self.meta.rows[j]
        win = params["window"]
        windows: list[np.ndarray] | np.ndarray
        if self._stream is not None:  # whole units, fetched per window (cellio.loading.streaming)
            windows = self._stream.read(self.sampler.plan(epoch), batch_index, rows, win)
            if self.pick is not None:
                windows = np.ascontiguousarray(windows[..., self.pick])
        elif np.all(win[:, 2:] == win[0, 2:]):
            windows = self.store.read(rows, crop=win)  # one threaded batch read
            if self.pick is not None:
                windows = np.ascontiguousarray(windows[..., self.pick])
        else:
            windows = [self.store.read_one(int(r), crop=w) for r, w in zip(rows, win)]
            if self.pick is not None:
                windows = [np.ascontiguousarray(w[..., self.pick]) for w in windows]
        meta = np.stack([self.meta.label[j], self.meta.cell_type[j], rows, views, self.meta.site[j],
                         self.meta.plate[j]], axis=1).astype(np.int64)
        return SourceBatch(windows=windows, params=params, mean=self.meta.mean[j], std=self.meta.std[j], meta=meta)

    # -- DALI external_source protocol -----------------------------------------------------------------------------
    def __call__(self, info: Any) -> tuple[list[np.ndarray], ...]:
        """BatchInfo(iteration, epoch_idx) -> one list per name in `self.outputs` (see cellio.loading.pipeline)."""
        epoch_idx = int(getattr(info, "epoch_idx", 0))
        iteration = int(getattr(info, "iteration", info))
        epoch = self.first_epoch + epoch_idx
        b = iteration + (self.start_batch if epoch_idx == 0 else 0)
        _plain_exception_pickling()
        sb = self.batch(epoch, b)
        if sb is None:
            raise StopIteration
        p = sb.params
        n = len(sb)
        # DALI's crop_mirror_normalize takes one (x - m') / s': fold the x*a + b jitter into it
        mean, std = normalization_affine(sb.mean, sb.std, p["scale"], p["shift"])
        columns: dict[str, Any] = {
            "image": lambda: sb.windows if isinstance(sb.windows, list) else list(sb.windows),
            "matrix": lambda: list(warp_matrices(p, self.cfg, self.out_hw)),
            "mean": lambda: list(mean),
            "std": lambda: list(std),
            "meta": lambda: list(sb.meta),
            **self._photometric_columns(p, n),
        }
        return tuple(columns[name]() for name in self.outputs)

    def _photometric_columns(self, p: dict[str, np.ndarray], n: int) -> dict[str, Any]:
        """The per-sample inputs of cellio.loading.pipeline.photometric_graph, from the drawn parameters."""
        if not self.train:
            return {}
        size = self.out_hw[0]  # training outputs are square crops
        yy, xx = field_coords(*self.out_hw)
        return {
            # DALI's gaussian_blur needs sigma > 0 even where the window is 1 tap (no blur)
            "blur_sigma": lambda: [np.float32(max(float(s), MIN_BLUR_SIGMA / 10)) for s in p["blur_sigma"]],
            "blur_window": lambda: [np.int32(blur_window(s)) for s in p["blur_sigma"]],
            "gamma": lambda: list(p["gamma"]),
            "field_y": lambda: [yy] * n,
            "field_x": lambda: [xx] * n,
            "field_gx": lambda: list(np.ascontiguousarray(p["field"][:, 0])),
            "field_gy": lambda: list(np.ascontiguousarray(p["field"][:, 1])),
            "field_v": lambda: list(np.ascontiguousarray(p["field"][:, 2])),
            "noise": lambda: list(noise_windows(p["noise_offset"], size, self.channels)),
            "noise_shot": lambda: [np.float32(v) for v in p["noise_shot"]],
            "noise_read": lambda: [np.float32(v) for v in p["noise_read"]],
        }


def _plain_exception_pickling() -> None:
    """Drop tblib's exception reducers in a DALI worker process.

    Importing dask.distributed runs `tblib.pickling_support.install()`, which registers copyreg reducers for every
    exception class in the process. A forked DALI worker inherits them, pickles the end-of-epoch StopIteration
    through tblib, and DALI's restricted unpickler refuses it ("global 'tblib...' is not permitted"). Only worker
    processes are changed: the user's own process keeps dask's reducers.
    """
    global _CLEANED_PID
    pid = os.getpid()
    if pid == _PARENT_PID or pid == _CLEANED_PID:
        return
    _CLEANED_PID = pid
    for cls, reducer in list(copyreg.dispatch_table.items()):
        if isinstance(cls, type) and issubclass(cls, BaseException) \
                and getattr(reducer, "__module__", "").startswith("tblib"):
            del copyreg.dispatch_table[cls]


_PARENT_PID = os.getpid()  # the process that imported cellio.loading.sources; forked workers differ
_CLEANED_PID = -1
