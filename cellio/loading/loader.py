"""`create_loader`: the store -> augmented (B, C, S, S) batches, DataLoader-like, with a DALI or a torch backend.

    loader = cellio.create_loader(store, 32, train=True, augment="d4_shift", rank=rank, world_size=world)
    for epoch in range(10):
        loader.set_epoch(epoch)
        for batch in loader:            # dict of torch tensors: image, label, cell_type, index, view, site, plate
            ...
    state = loader.state_dict()         # resume mid-epoch: loader.load_state_dict(state)

Both backends take their windows and random parameters from the same :class:`cellio.loading.sources.SiteSource`,
so they yield the same pixels (see docs/pipelines.md for the tolerances of interpolated ops).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..params import parse_choice, parse_device, parse_int
from ..errors import PipelineConfigError
from .sampling import BALANCE_MODES, LAST_BATCH_POLICIES, ShardedSampler, balance_weights
from .selection import select_sites, site_meta
from .sources import META_FIELDS, SiteMeta, SiteSource
from .streaming import DEFAULT_STREAM_BUFFER, READ_MODES, StreamSampler
from .transforms import (AugmentConfig, TTA_MODES, apply_torch, check_fits, eval_views, get_preset, pixel_tensor,
                         torch_dtype)

__all__ = ["BACKENDS", "BATCH_BY", "READ_MODES", "create_loader", "Loader", "select_sites"]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("dali", "torch")
BATCH_BY: tuple[str, ...] = ("plate", "experiment")
STATE_VERSION = 1


def _default_distributed() -> tuple[int, int]:
    """(rank, world_size) of an initialised torch.distributed group, else torchrun's env vars, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _require_device(device: str) -> None:
    """PipelineConfigError, before any data is read, when `device` names a CUDA device this process cannot use:
    otherwise torch says "Found no NVIDIA driver" at the first batch, or DALI asserts on its device_id."""
    if not device.startswith("cuda"):
        return
    try:
        import torch
    except ImportError:  # (the loader itself needs torch: create_loader reports that on its own)
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= n:
        found = "no CUDA device is available to this process" if n == 0 else \
            f"this process sees {n} CUDA device{'s' if n > 1 else ''} (cuda:0..cuda:{n - 1})"
        raise PipelineConfigError(f"device: {device!r} asked for, but {found}; use device='cpu', or leave device "
                                  f"unset ('cuda' where a GPU is available, else 'cpu')")


class _TorchBatches:
    """torch Dataset whose item b is batch b of one rank's epoch (read + optionally augmented in the worker)."""

    def __init__(self, source: SiteSource, epoch: int, start_batch: int, augment_here: bool):
        self.source, self.epoch, self.start, self.augment_here = source, epoch, start_batch, augment_here

    def __len__(self) -> int:
        return max(0, self.source.num_batches() - self.start)

    def __getitem__(self, b: int) -> dict[str, Any]:
        import torch

        sb = self.source.batch(self.epoch, self.start + b)
        if sb is None:
            raise IndexError(b)
        out: dict[str, Any] = {"meta": torch.from_numpy(sb.meta)}
        if self.augment_here:
            out["image"] = apply_torch(sb.windows, sb.params, sb.mean, sb.std, self.source.cfg)
        else:
            out["raw"] = sb
        return out


class Loader:
    """Iterable of batches for one rank (see module docstring). Build it with :func:`create_loader`."""

    def __init__(self, store: Any, meta: SiteMeta, sites: pd.DataFrame, cfg: AugmentConfig,
                 sampler: ShardedSampler | StreamSampler, *, train: bool, views: np.ndarray, tta: str | None,
                 dihedral: bool, backend: str, device: str, num_workers: int, prefetch: int,
                 channels: tuple[str, ...] | None = None):
        self.store = store
        self.channels = channels  # the loaded channels' names (None: all of the store's)
        self._pick = store.channel_indices(channels) if channels is not None else None
        self.sites = sites
        self.config = cfg
        self.sampler = sampler
        self.train = train
        self.views = views
        self.tta = tta
        self.dihedral = dihedral
        self.backend = backend
        self.device = device
        self.num_workers = num_workers
        self.prefetch = prefetch
        self._meta = meta
        self.read_mode = getattr(sampler, "mode", "random")  # "random" (byte ranges) or "stream" (whole units)
        self._epoch = 0
        self._batch = 0  # batches of the current epoch already yielded
        self._resume_batch: int | None = None  # set by load_state_dict for the next iteration
        self._pipe: Any = None  # DALI pipeline kept across epochs
        self._pipe_next_epoch = -1

    # -- DataLoader-like surface -----------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        """Batches this rank yields in a full epoch."""
        return self.sampler.num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle and random parameters derive from seed + epoch); restarts it at batch 0."""
        self.sampler.set_epoch(epoch)
        self._epoch = int(epoch)
        self._batch = 0
        self._resume_batch = None

    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch: reload with load_state_dict to yield exactly the remaining batches."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "batch": self._batch,
                "sampler": self.sampler.state(), "augment": self.config.to_dict(), "train": self.train,
                "tta": self.tta, "dihedral": self.dihedral,
                "channels": list(self.channels) if self.channels is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise PipelineConfigError(f"loader state: expected version {STATE_VERSION}, found "
                                      f"{state.get('version')!r}")
        mine = self.state_dict()
        for key in ("sampler", "augment", "train", "tta", "dihedral", "channels"):
            if state.get(key) != mine[key]:
                raise PipelineConfigError(f"loader state: {key} differs from this loader's (saved "
                                          f"{state.get(key)!r}, this loader {mine[key]!r}); build the loader with "
                                          "the same arguments to resume")
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise PipelineConfigError(f"loader state: batch {batch} outside 0..{len(self)}")
        self.sampler.set_epoch(int(state["epoch"]))
        self._epoch = int(state["epoch"])
        self._batch = batch
        self._resume_batch = batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield the current epoch (from the saved position right after load_state_dict); when it completes the
        loader moves on to the next epoch (set_epoch overrides)."""
        # a new iteration starts the epoch over, except right after load_state_dict (resume)
        epoch, start = self._epoch, (self._resume_batch if self._resume_batch is not None else 0)
        self._resume_batch = None
        self._batch = start
        from .pipeline import source_outputs

        source = SiteSource(self.store, self.config, self.sampler, self._meta, train=self.train, views=self.views,
                            tta=self.tta, first_epoch=epoch, start_batch=start,
                            outputs=source_outputs(self.config, train=self.train, dihedral=self.dihedral),
                            channels=self._pick)
        it = self._iter_dali(source, epoch, start) if self.backend == "dali" else self._iter_torch(source, epoch, start)
        for batch in it:
            self._batch += 1
            yield batch
        self._epoch = epoch + 1
        self._batch = 0
        self.sampler.set_epoch(self._epoch)

    # -- backends --------------------------------------------------------------------------------------------------
    def _finish(self, image: Any, meta: Any) -> dict[str, Any]:
        import torch

        image = image.to(torch_dtype(self.config.dtype))
        out = {"image": image}
        meta = meta.to(torch.int64)
        for k, name in enumerate(META_FIELDS):
            out[name] = meta[:, k].contiguous()
        return out

    def _iter_torch(self, source: SiteSource, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        import torch
        from torch.utils.data import DataLoader

        augment_here = not str(self.device).startswith("cuda")
        ds = _TorchBatches(source, epoch, start, augment_here)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs.update(num_workers=self.num_workers, prefetch_factor=max(1, self.prefetch),
                          persistent_workers=False)
        dl = DataLoader(ds, batch_size=None, shuffle=False, collate_fn=_identity, **kwargs)
        for item in dl:
            if augment_here:
                yield self._finish(item["image"], item["meta"])
            else:
                sb = item["raw"]
                img = apply_torch([pixel_tensor(w).to(self.device, non_blocking=True) for w in sb.windows],
                                  sb.params, sb.mean, sb.std, self.config, device=self.device)
                yield self._finish(img, item["meta"])

    def _iter_dali(self, source: SiteSource, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        import torch

        from .pipeline import build_pipeline

        # A pipeline (and its worker processes) is reused for the next epoch when iteration simply continues:
        # its source maps DALI's epoch counter to first_epoch + epoch_idx. Anything else (set_epoch jumps,
        # resume mid-epoch, an abandoned epoch) builds a fresh one.
        if self._pipe is None or start != 0 or epoch != self._pipe_next_epoch:
            self.close()
            self._pipe = build_pipeline(source, self.config, train=self.train, device=self.device,
                                        batch_size=self.batch_size, num_workers=self.num_workers,
                                        prefetch=self.prefetch, dihedral=self.dihedral)
        pipe = self._pipe
        finished = False
        try:
            while True:
                try:
                    image, meta = pipe.run()
                except StopIteration:
                    finished = True
                    break
                img_t = _dali_to_torch(image, self.device)
                meta_t = torch.from_numpy(np.array(meta.as_tensor(), copy=True))
                yield self._finish(img_t, meta_t)
        finally:
            if finished:
                pipe.reset()
                self._pipe_next_epoch = epoch + 1
            else:
                self.close()

    def close(self) -> None:
        """Shut down the DALI pipeline and its worker processes now (also happens when the loader is collected)."""
        if self._pipe is not None:
            from .pipeline import close_pipeline

            close_pipeline(self._pipe)
            self._pipe = None
            self._pipe_next_epoch = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: DALI may already be gone
            pass


def _stream_conflicts(train: bool, balance: str | None, batch_by: str | None,
                      samples_per_epoch: int | None) -> list[str]:
    """The loader options stream mode cannot honour (named for the error message)."""
    return [name for name, on in (("train=False", not train), (f"balance={balance!r}", balance is not None),
                                  (f"batch_by={batch_by!r}", batch_by is not None),
                                  ("samples_per_epoch", samples_per_epoch is not None)) if on]


def _stream_units(store: Any, rows: np.ndarray, read_mode: str, train: bool, balance: str | None,
                  batch_by: str | None, samples_per_epoch: int | None) -> np.ndarray | None:
    """The unit of each selected row when the loader streams, else None (read_mode "auto": stream when training
    from object storage and nothing conflicts; see create_loader)."""
    from ..errors import StoreError
    from ..store.files import is_url

    if read_mode == "random":
        return None
    if read_mode == "auto" and (_stream_conflicts(train, balance, batch_by, samples_per_epoch)
                                or not is_url(getattr(store, "path", ""))):
        return None
    try:
        return store.stream_units(rows)
    except StoreError as exc:
        if read_mode == "auto":
            log.info("%s; reading by byte ranges", exc)
            return None
        raise PipelineConfigError(f"read_mode='stream': {exc}") from None


def _identity(x: Any) -> Any:
    return x


def _dali_to_torch(tensors: Any, device: str) -> Any:
    """A dense DALI TensorList -> a torch tensor on `device`.

    CPU: zero-copy through DLPack. The pipeline runs DALI's dynamic executor, whose output buffers are reference
    counted rather than recycled, so a batch stays intact while the caller holds it (tested; copying 1.2 MB per
    224 site cost more CPU than the whole augmentation). GPU: one device copy on the current stream.
    """
    import torch

    dense = tensors.as_tensor()  # a view of a contiguous batch (all our outputs are uniform)
    if not type(dense).__name__.endswith("GPU"):
        return torch.from_dlpack(dense)
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    out = torch.empty(tuple(dense.shape()), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(out.device))
    return out


def create_loader(store: Any, batch_size: int, *, train: bool = True, augment: str | AugmentConfig = "d4_shift",
                  crop_size: int | None = None, normalize: str | None | bool = True, dtype: str | None = None,
                  rank: int | None = None, world_size: int | None = None, seed: int = 0,
                  backend: str | None = None, device: str | None = None,
                  datasets: Sequence[str] | str | None = ("train",), cell_types: Sequence[str] | None = None,
                  experiments: Sequence[str] | None = None, controls: bool | str = True,
                  indices: Sequence[int] | np.ndarray | None = None, balance: str | None = None,
                  last_batch: str | None = None, num_workers: int | None = None, tta: str | None = None,
                  dihedral: bool = False, prefetch: int = 2, batch_by: str | None = None,
                  samples_per_epoch: int | None = None, labels: Mapping[int, int] | None = None,
                  verify: bool = True, channels: Sequence[str] | str | None = None, read_mode: str = "auto",
                  stream_buffer: int = DEFAULT_STREAM_BUFFER) -> Loader:
    """A DataLoader-like iterable over `store` (a Store or a path) for one rank. Checks everything up front.

    augment: a preset name (see cellio.loading.transforms.list_presets) or an AugmentConfig; crop_size / dtype override
    it when given; normalize=True keeps the config's level (presets: "plate"), a level or None overrides it.
    train=False: deterministic, unshuffled TTA views, `tta` in "center" (default) | "grid9" | "full" and
    `dihedral` for the 8 D4 views; each (site, view) exactly once across ranks with last_batch="partial".
    rank / world_size default to torch.distributed (or torchrun's RANK / WORLD_SIZE), else 0 / 1.
    backend: "dali" (default when importable) or "torch"; device: "cuda" when available, else "cpu".
    last_batch: "drop" (train default) | "pad" | "partial" (eval default). balance: None | "class" | "plate".
    num_workers: worker processes (DALI external_source workers or DataLoader workers); 0 = in-process.
    batch_by: "plate" | "experiment": every batch holds sites of one plate (experiment); still every (site, view)
    exactly once per epoch across ranks with last_batch="partial" (cellio.loading.sampling).
    samples_per_epoch: a training epoch of that many sites whatever the selection's size (len(loader) fixed).
    labels: store row -> label for rows whose label should not come from the store (pseudo-labels; -1 unknown).
    verify: check every chunk's crc32c checksum as it is read (default); a damaged chunk then stops the epoch with
    a StoreDamagedError naming the file and the site. False only for trusted local disks (docs/performance.md).
    channels: load only these channels (names or keys of the store's layout, in this order; `image` then has that
    many), default all; LayoutError naming unknown ones and listing the store's channels.
    read_mode: "random" (every batch's sites anywhere in the selection, read by byte ranges), "stream" (training
    only: whole shard objects, each rank its own, shard order shuffled per epoch, sites shuffled within windows of
    `stream_buffer` shards; cellio/loading/streaming.py) or "auto" (default: "stream" for training from object
    storage, where it is faster — docs/performance.md, "Streaming from object storage" — "random" otherwise, and
    wherever stream mode does not apply: balance, batch_by, samples_per_epoch, evaluation, a non-cellio layout).
    """
    from .pipeline import dali_available, require_dali

    # --- configuration, all checked before any data is touched
    batch_size = parse_int("batch_size", batch_size, minimum=1)
    seed = parse_int("seed", seed)
    if not isinstance(verify, (bool, np.bool_)):
        raise PipelineConfigError(f"verify: expected True or False, found {verify!r}")
    if isinstance(augment, str):
        cfg = get_preset(augment)
    elif isinstance(augment, AugmentConfig):
        cfg = augment
    else:
        raise PipelineConfigError(f"augment: expected a preset name or an AugmentConfig, found {type(augment)}")
    changes: dict[str, Any] = {}
    if crop_size is not None:
        changes["crop_size"] = crop_size
    if normalize is not True:
        changes["normalize"] = None if normalize is False else normalize
    if dtype is not None:
        changes["dtype"] = dtype
    cfg = cfg.replace(**changes) if changes else cfg
    if not train:  # deterministic views: geometry comes from the TTA grid, nothing random
        cfg = cfg.without_random()
        tta = parse_choice("tta", tta or "center", TTA_MODES)
    elif tta is not None or dihedral:
        raise PipelineConfigError("tta / dihedral apply to train=False (evaluation) only; found "
                                  f"tta={tta!r}, dihedral={dihedral!r} with train=True")
    parse_choice("balance", balance, BALANCE_MODES, optional=True)
    parse_choice("batch_by", batch_by, BATCH_BY, optional=True)
    if samples_per_epoch is not None:
        parse_int("samples_per_epoch", samples_per_epoch, minimum=1)
        if not train:
            raise PipelineConfigError("samples_per_epoch: a fixed epoch length is for training; found it with "
                                      "train=False (evaluation yields every view exactly once)")
    if balance is not None and not train:
        raise PipelineConfigError("balance: a balanced sampler is for training; found it with train=False")
    last_batch = parse_choice("last_batch", last_batch or ("drop" if train else "partial"), LAST_BATCH_POLICIES)
    backend = parse_choice("backend", backend, BACKENDS, optional=True) or ("dali" if dali_available() else "torch")
    if backend == "dali":
        require_dali("create_loader(backend='dali')")
    device = parse_device(device or _default_device())
    _require_device(device)
    if rank is None or world_size is None:
        d_rank, d_world = _default_distributed()
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
    num_workers = parse_int("num_workers", min(4, os.cpu_count() or 1) if num_workers is None else num_workers)
    prefetch = parse_int("prefetch", prefetch, minimum=1)
    read_mode = parse_choice("read_mode", read_mode, READ_MODES)
    stream_buffer = parse_int("stream_buffer", stream_buffer, minimum=1)
    if read_mode == "stream":
        unstreamable = _stream_conflicts(train, balance, batch_by, samples_per_epoch)
        if unstreamable:
            raise PipelineConfigError(f"read_mode='stream' reads whole shards in a shuffled order for training; "
                                      f"it does not combine with {', '.join(unstreamable)} (use read_mode='random' "
                                      f"or 'auto')")

    # --- the store and the selection
    if isinstance(store, (str, os.PathLike)):
        from ..store import open_store

        store = open_store(store, verify=bool(verify))
    elif hasattr(store, "with_verify"):
        store = store.with_verify(bool(verify))
    h, w, _ = (int(v) for v in store.image_shape)  # any channel count: the store's layout says how many
    pick = store.channel_indices(channels)  # LayoutError naming unknown channels, before anything is read
    channel_names = None if pick is None else tuple(store.layout.channel_names[int(i)] for i in pick)
    check_fits(cfg, (h, w), None if train else tta)
    if not train and tta == "full" and dihedral and h != w:
        raise PipelineConfigError(f"tta='full' with dihedral=True needs square sites, found {h}x{w}")
    rows = select_sites(store.sites, datasets=datasets, cell_types=cell_types, experiments=experiments,
                        controls=controls, indices=indices)
    if len(rows) == 0:
        raise PipelineConfigError(f"the filters (datasets={datasets}, cell_types={cell_types}, experiments="
                                  f"{experiments}, controls={controls}) leave no site in {store!r}")
    meta = site_meta(store, rows, cfg.normalize, labels, pick)
    views = eval_views(tta, dihedral) if not train else np.zeros(1, dtype=np.int64)
    weights = None
    if balance == "class":
        weights = balance_weights(meta.label)
    elif balance == "plate":
        sel = store.sites.iloc[rows]
        weights = balance_weights((sel["experiment"].astype(str) + "/" + sel["plate"].astype(str)).to_numpy())
    groups = None
    if batch_by is not None:  # an item is (site j, view v) = j * len(views) + v
        sel = store.sites.iloc[rows]
        key = sel["experiment"].astype(str) + ("/" + sel["plate"].astype(str) if batch_by == "plate" else "")
        groups = np.repeat(key.to_numpy(), len(views))
    sampler: ShardedSampler | StreamSampler
    units = _stream_units(store, rows, read_mode, train, balance, batch_by, samples_per_epoch)
    if units is not None:  # one lane per worker process: each worker fetches its own units (streaming.py)
        sampler = StreamSampler(units, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                                last_batch=last_batch, lanes=max(1, num_workers), buffer=stream_buffer)
    else:
        sampler = ShardedSampler(len(rows) * len(views), batch_size=batch_size, rank=rank, world_size=world_size,
                                 seed=seed, shuffle=train, last_batch=last_batch, weights=weights, groups=groups,
                                 num_samples=None if samples_per_epoch is None else samples_per_epoch * len(views))
    sites = store.sites.iloc[rows]
    log.info("loader: %d sites x %d views, rank %d/%d, %d batches of %d, backend %s on %s, %s reads", len(rows),
             len(views), rank, world_size, sampler.num_batches(), batch_size, backend, device,
             getattr(sampler, "mode", "random"))
    return Loader(store, meta, sites, cfg, sampler, train=train, views=views, tta=tta if not train else None,
                  dihedral=dihedral, backend=backend, device=device, num_workers=num_workers, prefetch=prefetch,
                  channels=channel_names)
