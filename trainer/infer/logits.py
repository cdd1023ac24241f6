"""Per-view logits on disk: written batch by batch, read back in row blocks, never whole in memory.

At RxRx1's size the per-view logits are the largest thing the job makes: the 44,286 test sites x 72 views (nine
crops x 8 dihedral) x 1,139 classes are 14.5 GB in float32. `trainer.infer.predict` streams them into a `.npy` file
with `LogitsWriter` (float16 when that file would pass 1 GiB: half the bytes; its rounding, <= 2^-11 relative,
is far below what moves a well's mean over 72 views, see docs/performance.md), and the chain reads them through
`LogitsFile`, which slices like an array but reads only the rows asked for. Everything that consumes logits
(trainer.infer.aggregate, trainer.infer.stacker) walks them with `iter_rows`, one block at a time.

    with LogitsWriter("preds.logits.npy", n_cols=1139, dtype=np.float16) as w:
        for batch in ...: w.append(batch_logits)
    lf = LogitsFile("preds.logits.npy"); lf.shape; lf[1000:2000]; lf[np.array([5, 17])]
    for lo, block in iter_rows(lf): ...          # float32 blocks of CHUNK_ROWS rows
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellio.errors import ConfigError, MetadataError

from trainer.training.disk import temporary_beside

__all__ = ["LogitsFile", "LogitsWriter", "iter_rows", "CHUNK_ROWS", "PROGRESS_MIN_ROWS", "HALF_ABOVE_BYTES"]

CHUNK_ROWS = 32768            # rows per block: 150 MB of float32 at 1,139 classes
PROGRESS_MIN_ROWS = 1 << 20   # walks over more rows than this show a progress bar
HALF_ABOVE_BYTES = 1 << 30    # trainer.infer.predict stores float16 above this many float32 bytes
_HEADER = 128                 # bytes reserved for the .npy header (written last, when the row count is known)


class LogitsWriter:
    """Appends (rows, n_cols) blocks to a `.npy` file; the header (with the final row count) is written on close.
    The file appears under its name only when closed without error (temp file, then rename)."""

    def __init__(self, path: str | os.PathLike[str], n_cols: int, dtype: Any = np.float32):
        self.path = Path(path)
        self.n_cols, self.dtype, self.rows = int(n_cols), np.dtype(dtype), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_beside(self.path)
        self.fh = open(self.tmp, "wb")
        self.fh.write(b"\0" * _HEADER)

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.n_cols:
            raise ConfigError(f"LogitsWriter: expected blocks of (rows, {self.n_cols}), found {block.shape}")
        self.fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> Path:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.n_cols)})
        hlen = _HEADER - 10
        text = (header + " " * (hlen - len(header) - 1) + "\n").encode("latin1")
        self.fh.seek(0)
        self.fh.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + text)
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> LogitsWriter:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class LogitsFile:
    """A 2-D `.npy` file read in row ranges: `lf[lo:hi]` and `lf[int_rows]` return in-memory arrays of those rows
    only; `shape`, `dtype`, `ndim`, `len` like an array. `np.asarray(lf)` reads it all (avoid at scale)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise MetadataError(f"logits file {self.path} does not exist (written by trainer.infer.predict beside its "
                                ".npz)")
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(f))
            self.offset = f.tell()
        if len(shape) != 2 or fortran:
            raise MetadataError(f"{self.path}: expected a 2-D C-order array, found shape {shape}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, lo: int, hi: int) -> np.ndarray:
        n = max(0, hi - lo)
        data = np.fromfile(self.path, dtype=self.dtype, count=n * self.shape[1],
                           offset=self.offset + lo * self.shape[1] * self.dtype.itemsize)
        return data.reshape(n, self.shape[1])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.shape[0])
            block = self._read(lo, hi) if hi > lo else np.zeros((0, self.shape[1]), self.dtype)
            return block if step == 1 else block[::step]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self.take(rows.astype(np.int64))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """These rows (any order, repeats allowed), reading only the blocks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows out of range 0..{self.shape[0] - 1}")
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        blocks = rows // CHUNK_ROWS
        for b in np.unique(blocks):
            sel = np.flatnonzero(blocks == b)
            lo = int(b) * CHUNK_ROWS
            out[sel] = self._read(lo, min(lo + CHUNK_ROWS, self.shape[0]))[rows[sel] - lo]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._read(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


def iter_rows(values: Any, chunk: int | None = None, desc: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 block) over an array or a LogitsFile, `chunk` rows (default CHUNK_ROWS) at a time; a
    progress bar named `desc` when there are more than PROGRESS_MIN_ROWS rows."""
    from tqdm.auto import tqdm

    n, chunk = len(values), chunk or CHUNK_ROWS
    with tqdm(total=n, desc=desc, unit="view", leave=False, disable=desc is None or n <= PROGRESS_MIN_ROWS) as bar:
        for lo in range(0, n, chunk):
            block = np.asarray(values[lo:lo + chunk], dtype=np.float32)
            yield lo, block
            bar.update(len(block))
