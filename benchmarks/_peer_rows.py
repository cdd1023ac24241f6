"""The loaders the peers benchmark compares: each one built the way its own documentation recommends.

    loader = open_loader(spec)                # spec: RowSpec (which row, W workers/threads, data, crop, batch)
    for ids, images in loader.epoch(0):       # ids: int64 (B,) store rows; images: float32 (B, 6, S, S)
        ...
    loader.close()

Every row delivers the same thing: random `crop` x `crop` windows of the same 512 px sites, one of the 8 dihedral
views, normalised per channel with the same mean/std (the store's global statistics) to float32, batches of
`batch`, every site exactly once per epoch (last batch partial). The peers share one augmentation written with
torchvision v2 (`Augmentation`), what a user of those loaders writes; cellio's rows use `cellio.create_loader`
(public API only) with `augment="d4_shift", normalize="global"`.

`check=True` turns the augmentation off (the whole site, no flip, the same normalisation) so the benchmark can
compare every row's pixels with the PNGs site by site (`fingerprints`) before it times anything.

W means: DataLoader worker processes (seed, webdataset, litdata, cellio torch), DALI external-source worker
processes (cellio DALI; DALI adds its own operator threads), or pipeline threads (spdl; at W=0 SPDL still runs its
stages in one background thread, it has no in-caller mode).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

PEERS = ("seed", "wds", "wds_lz4", "litdata", "spdl")
CELLIO = ("cellio_torch", "cellio_dali")
ROWS = PEERS + CELLIO
# the package each row needs beyond cellio's own (a row whose package is missing is reported, never faked)
REQUIRES = {"seed": "torchvision", "wds": "webdataset", "wds_lz4": "lz4", "litdata": "litdata", "spdl": "spdl",
            "cellio_torch": "torch", "cellio_dali": "nvidia.dali"}
STREAMING = ("wds", "wds_lz4", "litdata", "cellio_torch", "cellio_dali")  # rows that read from object storage
LITDATA_STREAM_CACHE = "200MB"  # about 3 of its 64 MB chunks: what a stream of a larger-than-disk set keeps
WDS_SHUFFLE = 100  # samples in WebDataset's shuffle buffer (raw 1.5 MB sites: ~ImageNet's 1000 x 110 kB JPEGs)
# The DataLoader-based peers keep their worker processes between epochs (persistent_workers=True). Restarting them
# costs a few tenths of a second per epoch here: on this benchmark's epochs of a few hundred sites that would weigh
# on every timed epoch, on RxRx1's 73,000-site epochs it would not. (cellio's torch backend restarts its workers each
# epoch, its own choice: its per-epoch start is reported, not hidden.)
PERSISTENT = True


@dataclass(frozen=True)
class RowSpec:
    """Everything one row needs, picklable (it crosses into the row's own process)."""

    row: str
    workers: int
    n_sites: int
    crop: int
    batch: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    store: str                                   # cellio store: a path or an s3:// URL
    npy: str = ""
    wds: list[str] = field(default_factory=list)       # shard paths or URLs
    wds_lz4: list[str] = field(default_factory=list)
    litdata: str = ""                            # optimize output: a path or an s3:// URL
    storage_options: dict[str, Any] | None = None  # fsspec options for s3:// (cellio)
    litdata_storage: dict[str, Any] | None = None  # boto3 options for s3:// (litdata)
    cache_dir: str = ""                          # litdata's download cache for s3://
    seed: int = 0
    check: bool = False
    torch_threads: int = 0                       # torch intra-op threads of the row's process (0: torch's default)


# --- the peers' shared augmentation ---------------------------------------------------------------------------
class RandomRot90:
    """Rotate by a uniform multiple of 90 degrees; with the two flips before it, a uniform dihedral (D4) view."""

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))


class Augmentation:
    """uint8 (6, H, W) tensor -> float32 (6, S, S): random crop, D4, per-channel normalisation (torchvision v2).

    check=True: the whole site, no flip, the same normalisation (deterministic). Picklable (a worker process may
    receive it)."""

    def __init__(self, spec: RowSpec):
        import torch
        from torchvision.transforms import v2

        geometry: list[Any] = [] if spec.check else [v2.RandomCrop(spec.crop), v2.RandomHorizontalFlip(),
                                                     v2.RandomVerticalFlip(), RandomRot90()]
        self.tf = v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=False),
                              v2.Normalize(list(spec.mean), list(spec.std))])

    def __call__(self, x: Any) -> Any:
        import torch
        from torchvision import tv_tensors

        return self.tf(tv_tensors.Image(x)).as_subclass(torch.Tensor)


# --- fingerprints: what the pixel check compares --------------------------------------------------------------
def fingerprints(images: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """Per site (B, 6, 3) int64: each channel's pixel sum and its row- and column-weighted sums, of the uint8 values
    recovered from normalised float32 images (x * std + mean, rounded); and the largest rounding residual (a wrong
    mean/std or a float path that is not the pixels shows up there). The weighted sums tell a transposed or flipped
    site from the original, which a plain sum would not."""
    x = np.asarray(images, dtype=np.float32)
    v = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    u = np.rint(v)
    residual = float(np.abs(v - u).max()) if v.size else 0.0
    return uint8_fingerprints(u.astype(np.int64)), residual


def uint8_fingerprints(u: np.ndarray) -> np.ndarray:
    """(B, 6, H, W) integer pixels -> (B, 6, 3) int64 fingerprints (sum, row-weighted, column-weighted)."""
    u = np.asarray(u, dtype=np.int64)
    rows = np.arange(1, u.shape[2] + 1, dtype=np.int64)
    cols = np.arange(1, u.shape[3] + 1, dtype=np.int64)
    by_row = u.sum(axis=3)  # (B, 6, H)
    by_col = u.sum(axis=2)  # (B, 6, W)
    return np.stack([by_row.sum(axis=2), by_row @ rows, by_col @ cols], axis=2)


# --- loaders --------------------------------------------------------------------------------------------------
class PeerLoader(Protocol):
    """One row's loader: `epoch(e)` yields (ids, images) batches; `close()` releases workers."""

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]: ...

    def close(self) -> None: ...


class _TorchLoader:
    """A DataLoader-like object whose batches are (ids, images) or a dict (cellio)."""

    def __init__(self, loader: Any, set_epoch: Callable[[int], None] | None = None,
                 unpack: Callable[[Any], tuple[Any, Any]] = lambda b: (b[0], b[1])):
        self.loader, self._set_epoch, self._unpack = loader, set_epoch, unpack

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        if self._set_epoch is not None:
            self._set_epoch(epoch)
        for b in self.loader:
            yield self._unpack(b)

    def close(self) -> None:
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()


class NpySites:
    """The seed's Dataset: one uncompressed .npy per site, np.load, torchvision v2 (map-style, picklable)."""

    def __init__(self, root: str, n: int, tf: Callable[[Any], Any]):
        self.root, self.n, self.tf = root, n, tf

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, Any]:
        import torch

        return i, self.tf(torch.from_numpy(np.load(os.path.join(self.root, f"{i:06d}.npy"))))


def _seed(spec: RowSpec) -> PeerLoader:
    # torch.utils.data.DataLoader (https://pytorch.org/docs/stable/data.html): shuffle=True, num_workers=W,
    # prefetch_factor 2 (the default); workers kept between epochs (PERSISTENT)
    import torch
    from torch.utils.data import DataLoader

    ds = NpySites(spec.npy, spec.n_sites, Augmentation(spec))
    g = torch.Generator().manual_seed(spec.seed)
    return _TorchLoader(DataLoader(ds, batch_size=spec.batch, shuffle=not spec.check, num_workers=spec.workers,
                                   drop_last=False, generator=g, persistent_workers=PERSISTENT and spec.workers > 0))


def _lz4_npy(data: bytes) -> Any:
    import io

    import lz4.frame

    return np.load(io.BytesIO(lz4.frame.decompress(data)))


class _WdsSample:
    """WebDataset sample dict -> (id, augmented image); picklable for the loader's worker processes."""

    def __init__(self, ext: str, tf: Callable[[Any], Any]):
        self.ext, self.tf = ext, tf

    def __call__(self, sample: dict[str, Any]) -> tuple[int, Any]:
        import torch

        return int(sample["__key__"]), self.tf(torch.from_numpy(sample[self.ext]))


def _wds(spec: RowSpec, lz4: bool) -> PeerLoader:
    # WebDataset's README and examples/train-resnet50-wds.ipynb (github.com/webdataset/webdataset): WebDataset(urls,
    # shardshuffle=...).shuffle(n).decode(...).map(...).batched(B) -- batch inside the workers -- then
    # WebLoader(dataset, batch_size=None, num_workers=W). Not resampled: an epoch reads every shard once (exact-once,
    # like the other rows); shards are split between workers by wds.split_by_worker (the default).
    import webdataset as wds
    from torch.utils.data import default_collate

    urls = spec.wds_lz4 if lz4 else spec.wds
    ext = "npy.lz4" if lz4 else "npy"
    ds = wds.WebDataset(urls, shardshuffle=False if spec.check else len(urls), seed=spec.seed, empty_check=False)
    if not spec.check:
        ds = ds.shuffle(WDS_SHUFFLE)
    ds = (ds.decode(wds.handle_extension("npy.lz4", _lz4_npy)) if lz4 else ds.decode())
    ds = ds.map(_WdsSample(ext, Augmentation(spec))).batched(spec.batch, partial=True, collation_fn=default_collate)
    return _TorchLoader(wds.WebLoader(ds, batch_size=None, num_workers=spec.workers,
                                      persistent_workers=PERSISTENT and spec.workers > 0))


class _LitItem:
    """litdata item {"index", "image"} -> (id, augmented image)."""

    def __init__(self, tf: Callable[[Any], Any]):
        self.tf = tf

    def __call__(self, item: dict[str, Any]) -> tuple[int, Any]:
        import torch

        return int(item["index"]), self.tf(torch.as_tensor(item["image"]))


def _litdata(spec: RowSpec) -> PeerLoader:
    # litdata README ("Option 2: Optimize for maximum performance", step 3): StreamingDataset(dir, shuffle=True,
    # seed=...) + StreamingDataLoader(dataset, batch_size=B, num_workers=W); s3:// with storage_options holding the
    # boto3 endpoint and keys ("custom S3-compatible endpoint") and a cache_dir for the downloaded chunks
    import litdata

    kw: dict[str, Any] = {}
    if spec.litdata_storage:
        # max_cache_size below the data set (its docs: the cache budget; chunks past it are deleted once read) so
        # every epoch streams from the server, as the other rows do, instead of reading epoch 1's local copy
        kw.update(storage_options=spec.litdata_storage, cache_dir=spec.cache_dir,
                  max_cache_size=LITDATA_STREAM_CACHE)
        # litdata 0.2.76 fetches chunks with obstore when it is installed (cellio's bench extra installs it) and
        # builds that S3Store with fixed client options that refuse a plain-http endpoint ("BadScheme"): the local
        # server cannot be read that way. Turned off, litdata uses its boto3 client: its path without obstore.
        import litdata.streaming.downloader as downloader

        downloader._OBSTORE_AVAILABLE = False  # type: ignore[attr-defined]
    ds = litdata.StreamingDataset(spec.litdata, shuffle=not spec.check, seed=spec.seed, drop_last=False,
                                  transform=_LitItem(Augmentation(spec)), **kw)
    return _TorchLoader(litdata.StreamingDataLoader(ds, batch_size=spec.batch, num_workers=spec.workers,
                                                    persistent_workers=PERSISTENT and spec.workers > 0))


class _SpdlLoader:
    # SPDL's "Building High-Performance DataLoaders" (facebookresearch.github.io/spdl/main/getting_started/
    # pytorch.html): split I/O (read the file's bytes) from CPU work (decode + augment) into stages with their own
    # concurrency, aggregate(B), collate, add_sink(buffer); a fresh pipeline per epoch, threads not processes.
    # Both stages get W threads (the pool's size), so the row has the same W as the others.
    def __init__(self, spec: RowSpec):
        self.spec = spec
        self.tf = Augmentation(spec)
        self.threads = max(1, spec.workers)

    def close(self) -> None:
        pass  # each epoch's pipeline stops itself (auto_stop)

    def _read(self, i: int) -> tuple[int, bytearray]:
        path = os.path.join(self.spec.npy, f"{int(i):06d}.npy")
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buf)
        return int(i), buf

    def _decode(self, item: tuple[int, bytearray]) -> tuple[int, Any]:
        import spdl.io
        import torch

        i, buf = item
        return i, self.tf(torch.from_numpy(spdl.io.load_npy(buf)))

    @staticmethod
    def _collate(items: list[tuple[int, Any]]) -> tuple[Any, Any]:
        import torch

        return torch.tensor([i for i, _ in items], dtype=torch.int64), torch.stack([x for _, x in items])

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        from spdl.pipeline import PipelineBuilder

        n = self.spec.n_sites
        order = np.arange(n) if self.spec.check else np.random.default_rng((self.spec.seed, epoch)).permutation(n)
        pipeline = (PipelineBuilder()
                    .add_source(order.tolist())
                    .pipe(self._read, concurrency=self.threads, output_order="completion")
                    .pipe(self._decode, concurrency=self.threads)
                    .aggregate(self.spec.batch)
                    .pipe(self._collate)
                    .add_sink(2)
                    .build(num_threads=self.threads))
        with pipeline.auto_stop():
            yield from pipeline.get_iterator(timeout=600)


def _cellio(spec: RowSpec, backend: str) -> PeerLoader:
    import cellio

    store = cellio.open_store(spec.store, storage_options=spec.storage_options)
    common = dict(backend=backend, device="cpu", num_workers=spec.workers, normalize="global", seed=spec.seed,
                  last_batch="partial", datasets=None)
    if spec.check:  # the whole site, no randomness: one centre view of size H
        loader = cellio.create_loader(store, spec.batch, train=False, crop_size=store.image_shape[0], **common)
    else:
        loader = cellio.create_loader(store, spec.batch, train=True, augment="d4_shift", crop_size=spec.crop,
                                      **common)
    return _TorchLoader(loader, set_epoch=loader.set_epoch, unpack=lambda b: (b["index"], b["image"]))


def open_loader(spec: RowSpec) -> PeerLoader:
    """The row's loader (raises ImportError naming the package when the row's library is missing)."""
    if spec.row not in ROWS:
        raise ValueError(f"row: expected one of {ROWS}, found {spec.row!r}")
    if spec.workers < 0:
        raise ValueError(f"workers: expected >= 0, found {spec.workers}")
    build: dict[str, Callable[[], PeerLoader]] = {
        "seed": lambda: _seed(spec),
        "wds": lambda: _wds(spec, lz4=False),
        "wds_lz4": lambda: _wds(spec, lz4=True),
        "litdata": lambda: _litdata(spec),
        "spdl": lambda: _SpdlLoader(spec),
        "cellio_torch": lambda: _cellio(spec, "torch"),
        "cellio_dali": lambda: _cellio(spec, "dali"),
    }
    return build[spec.row]()


def missing_package(row: str) -> str | None:
    """The import error text of the row's library, or None when it imports."""
    import importlib

    try:
        importlib.import_module(REQUIRES[row])
        if row == "wds_lz4":
            importlib.import_module("webdataset")
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# --- one epoch, checked ---------------------------------------------------------------------------------------
@dataclass
class EpochResult:
    seconds: float
    sites: int
    first_batch_s: float
    fingerprints: dict[int, np.ndarray] | None = None
    residual: float = 0.0


def run_epoch(loader: PeerLoader, spec: RowSpec, epoch: int, t0: float | None = None,
              truth: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> EpochResult:
    """Iterate one epoch; raise if it is not every site exactly once in batches of the expected shape.

    t0: when the clock started (default: now), e.g. before the loader was built, for the time to the first batch.
    check specs also return every site's fingerprints, recovered with `truth` = (mean, std), the statistics the
    images should have been normalised with (default: the spec's own, which cannot catch a wrong spec)."""
    mean, std = truth if truth is not None else (spec.mean, spec.std)
    t0 = time.perf_counter() if t0 is None else t0
    first = None
    seen: list[np.ndarray] = []
    fps: dict[int, np.ndarray] | None = {} if spec.check else None
    residual = 0.0
    for ids, images in loader.epoch(epoch):
        if first is None:
            first = time.perf_counter() - t0
        ids_np = np.asarray(ids, dtype=np.int64).reshape(-1)
        side = None if spec.check else spec.crop
        shape = tuple(images.shape)
        if (len(shape) != 4 or shape[0] != len(ids_np) or shape[1] != 6 or str(images.dtype) != "torch.float32"
                or (side is not None and shape[2:] != (side, side))):
            raise AssertionError(f"{spec.row}: a batch of {len(ids_np)} ids came with images {images.dtype} "
                                 f"{shape}; expected float32 ({len(ids_np)}, 6, {side or 'H'}, {side or 'W'})")
        if len(ids_np) > spec.batch:
            raise AssertionError(f"{spec.row}: a batch of {len(ids_np)} sites; expected at most {spec.batch}")
        seen.append(ids_np)
        if fps is not None:
            fp, r = fingerprints(images, mean, std)
            residual = max(residual, r)
            for i, f in zip(ids_np.tolist(), fp):
                fps[int(i)] = f
    seconds = time.perf_counter() - t0
    got = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    if len(got) != spec.n_sites or not np.array_equal(np.sort(got), np.arange(spec.n_sites)):
        counts = np.bincount(got, minlength=spec.n_sites) if len(got) else np.zeros(spec.n_sites, int)
        raise AssertionError(f"{spec.row}: an epoch delivered {len(got)} sites, {int((counts == 0).sum())} missing "
                             f"and {int((counts > 1).sum())} repeated; expected each of {spec.n_sites} exactly once")
    return EpochResult(seconds, len(got), first if first is not None else seconds, fps, residual)


def compare_fingerprints(row: str, got: dict[int, np.ndarray], residual: float,
                         reference: np.ndarray) -> str | None:
    """None when every site's fingerprint equals the reference (row i of `reference` = site i), else what differs."""
    if residual > 0.05:
        return (f"{row}: normalised pixels do not map back to integers (largest residual {residual:.3f}): a "
                f"different mean/std or not the site's pixels")
    if sorted(got) != list(range(len(reference))):
        return f"{row}: the check epoch held {len(got)} site ids, expected 0..{len(reference) - 1}"
    bad = [i for i in range(len(reference)) if not np.array_equal(got[i], reference[i])]
    if bad:
        i = bad[0]
        return (f"{row}: {len(bad)} of {len(reference)} sites differ from the PNGs (site {i}: fingerprint "
                f"{got[i][:, 0].tolist()} vs {reference[i][:, 0].tolist()} channel sums)")
    return None


def reference_fingerprints(raw: Path, paths: list[list[str]]) -> np.ndarray:
    """(N, 6, 3) fingerprints of every site straight from its PNGs: the truth every row is checked against."""
    from _peer_formats import read_site

    return np.stack([uint8_fingerprints(read_site(raw, p)[None])[0] for p in paths])
