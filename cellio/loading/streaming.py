"""The loader's stream mode (`create_loader(read_mode="stream")`): whole objects instead of byte ranges.

What WebDataset and litdata do, with the loader's exact-once and resume contract kept:

1. The epoch's global order: the units (a shard object, or a run of chunk objects: `Store.stream_units`) that hold
   the selected sites, in a permutation seeded by (seed, epoch); each unit's sites together, in store order.
2. The last-batch policy on that order (as `ShardedSampler`: "partial" every site once, "drop" the global tail,
   "pad" the order extended by its own head), then each rank takes one *contiguous* part of it (near-equal sizes;
   equal under "drop"/"pad"), so a rank reads only its own units (a unit cut by a rank boundary is read by both).
3. A rank's part is cut into `lanes` contiguous runs of whole batches, one per loader worker (the torch
   DataLoader hands batch k to worker k mod W, so lane k mod W's objects are fetched by that worker alone). Within a
   lane, the sites of each window of `buffer` consecutive units are shuffled (seeded by seed, epoch, rank, lane);
   the lane is cut into batches, and the rank yields the lanes' batches round-robin.

The whole order is a pure function of (seed, epoch, units, batch size, rank, world size, policy, lanes, buffer), so
resuming skips the batches already yielded and reproduces the rest, exactly as in random mode; changing
`num_workers` (lanes) or `stream_buffer` changes the order, and the loader's state check refuses the mismatch.

What it gives up against random mode (docs/performance.md, "Streaming from object storage"): a batch holds sites
of at most `buffer` units (+1 at a window edge), not of the whole data set; two sites of one unit are never more
than a window apart in a lane; units cut by rank or lane boundaries are fetched by two readers.

`StreamReader` is the per-process half: it fetches a window's units whole (one concurrent call), fetches the
lane's next window on a background thread while the current one is decoded, and drops a window after its last
batch.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PipelineConfigError
from ..params import parse_choice, parse_int
from .sampling import LAST_BATCH_POLICIES, LastBatch

__all__ = ["READ_MODES", "DEFAULT_STREAM_BUFFER", "StreamPlan", "StreamSampler", "StreamReader"]

log = logging.getLogger(__name__)

READ_MODES: tuple[str, ...] = ("auto", "random", "stream")
DEFAULT_STREAM_BUFFER = 4  # units whose sites are shuffled together (WebDataset / litdata: a few shards)


@dataclass(frozen=True)
class StreamPlan:
    """One rank's epoch in stream mode. items / positions / bounds: as `ShardedSampler.rank_order` and
    `batch_bounds`; batch_windows[b]: the windows batch b reads from; window_units[w]: the units of window w;
    window_next[w]: the lane's next window (-1: none); window_last[w]: the last batch that reads window w."""

    epoch: int
    items: np.ndarray
    positions: np.ndarray
    bounds: np.ndarray
    batch_windows: list[tuple[int, ...]]
    window_units: list[np.ndarray]
    window_next: np.ndarray
    window_last: np.ndarray


class StreamSampler:
    """The stream-mode epoch order for one rank (module docstring); the interface of `ShardedSampler` that the
    loader and `SiteSource` use, plus `plan(epoch)`.

    units: the unit of each item (item i = selected site i); lanes: loader workers (>= 1); buffer: units per
    shuffle window."""

    mode = "stream"

    def __init__(self, units: np.ndarray, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 last_batch: LastBatch = "drop", lanes: int = 1, buffer: int = DEFAULT_STREAM_BUFFER):
        self.units = np.asarray(units, dtype=np.int64).reshape(-1)
        self.n = len(self.units)
        if self.n < 1:
            raise PipelineConfigError("stream sampler: expected at least 1 item, found none (did the filters "
                                      "remove every site?)")
        self.batch_size = parse_int("batch_size", batch_size, minimum=1)
        self.world_size = parse_int("world_size", world_size, minimum=1)
        self.rank = parse_int("rank", rank)
        if self.rank >= self.world_size:
            raise PipelineConfigError(f"rank: expected 0 <= rank < world_size={world_size}, found {rank}")
        self.seed = parse_int("seed", seed)
        self.last_batch: LastBatch = parse_choice("last_batch", last_batch, LAST_BATCH_POLICIES)
        self.lanes = parse_int("lanes", lanes, minimum=1)
        self.buffer = parse_int("stream_buffer", buffer, minimum=1)
        self.shuffle = True
        self.epoch = 0
        self._plan: StreamPlan | None = None
        if self.last_batch == "drop" and self.num_batches() < 1:
            raise PipelineConfigError(
                f"last_batch='drop': {self.n} items cannot fill one batch of {self.batch_size} on each of "
                f"{self.world_size} ranks; use a smaller batch_size or last_batch='partial'/'pad'")

    # -- the ShardedSampler surface ---------------------------------------------------------------------------------
    @property
    def epoch_items(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = parse_int("epoch", epoch)

    def _policy_total(self) -> int:
        step = self.world_size * self.batch_size
        if self.last_batch == "drop":
            return (self.n // step) * step
        if self.last_batch == "pad":
            return -(-self.n // step) * step
        return self.n

    def _rank_span(self) -> tuple[int, int]:
        """[start, stop) of this rank's part of the (policy-applied) global order."""
        total, w, r = self._policy_total(), self.world_size, self.rank
        if self.last_batch != "partial":
            per = total // w
            return r * per, (r + 1) * per
        base, extra = divmod(total, w)
        start = r * base + min(r, extra)
        return start, start + base + (r < extra)

    def __len__(self) -> int:
        start, stop = self._rank_span()
        return stop - start

    def num_batches(self) -> int:
        m = len(self)
        return m // self.batch_size if self.last_batch == "drop" else -(-m // self.batch_size)

    def positions(self) -> np.ndarray:
        return self.plan(self.epoch).positions

    def rank_order(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        p = self.plan(self.epoch if epoch is None else int(epoch))
        return p.items, p.positions

    def batch_bounds(self, epoch: int | None = None) -> np.ndarray:
        return self.plan(self.epoch if epoch is None else int(epoch)).bounds

    def state(self) -> dict:
        """What must match for a saved position in an epoch to mean the same thing on reload."""
        return {"mode": "stream", "n": self.n, "batch_size": self.batch_size, "rank": self.rank,
                "world_size": self.world_size, "seed": self.seed, "last_batch": self.last_batch,
                "lanes": self.lanes, "buffer": self.buffer, "units": int(len(np.unique(self.units)))}

    # -- the order ---------------------------------------------------------------------------------------------
    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """Items of the epoch over all ranks: units in a seeded permutation, each unit's items in store order."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0x57E4])
        uniq, inverse = np.unique(self.units, return_inverse=True)
        rank_of_unit = np.empty(len(uniq), dtype=np.int64)
        rank_of_unit[rng.permutation(len(uniq))] = np.arange(len(uniq))
        return np.lexsort((np.arange(self.n), rank_of_unit[inverse])).astype(np.int64)

    def plan(self, epoch: int) -> StreamPlan:
        """This rank's epoch (memoised for the last epoch asked)."""
        if self._plan is not None and self._plan.epoch == epoch:
            return self._plan
        order = self.global_order(epoch)
        total = self._policy_total()
        gpos = np.arange(total, dtype=np.int64)
        items_all = order[gpos % self.n]  # "pad": the head again past the end
        start, stop = self._rank_span()
        items, pos = items_all[start:stop], gpos[start:stop]
        B, m = self.batch_size, stop - start
        nb = self.num_batches()
        per_lane = [nb // self.lanes + (k < nb % self.lanes) for k in range(self.lanes)]
        lane_batches: list[list[np.ndarray]] = []   # per lane: index arrays into the rank part, per batch
        window_units: list[np.ndarray] = []
        window_next: list[int] = []
        item_window = np.empty(m, dtype=np.int64)
        first_batch = 0
        for lane, count in enumerate(per_lane):
            a, b = min(first_batch * B, m), min((first_batch + count) * B, m)
            first_batch += count
            if a >= b:
                lane_batches.append([])
                continue
            lane_units = self.units[items[a:b]]
            # windows: runs of `buffer` consecutive units of the lane
            change = np.flatnonzero(np.diff(lane_units)) + 1
            run_starts = np.concatenate([[0], change])
            win_starts = run_starts[::self.buffer]
            win_bounds = np.append(win_starts, b - a)
            rng = np.random.default_rng([self.seed, epoch, 0x57E5, self.rank, lane])
            idx = np.arange(a, b, dtype=np.int64)
            first_window = len(window_units)
            for k in range(len(win_starts)):
                s, e = int(win_bounds[k]), int(win_bounds[k + 1])
                idx[s:e] = a + s + rng.permutation(e - s)
                item_window[a + s:a + e] = len(window_units)
                window_units.append(np.unique(lane_units[s:e]))
                window_next.append(len(window_units) if k + 1 < len(win_starts) else -1)
            assert len(window_units) > first_window
            lane_batches.append([idx[k:k + B] for k in range(0, b - a, B)])
        # the lanes' batches round-robin: batch k of the rank belongs to lane k mod lanes while every lane has one
        sequence: list[np.ndarray] = []
        for j in range(max(per_lane, default=0)):
            sequence += [lb[j] for lb in lane_batches if j < len(lb)]
        sel = np.concatenate(sequence) if sequence else np.zeros(0, np.int64)
        sizes = np.array([len(s) for s in sequence], dtype=np.int64)
        stops = np.cumsum(sizes)
        bounds = np.stack([stops - sizes, stops], axis=1) if len(sizes) else np.zeros((0, 2), np.int64)
        batch_windows = [tuple(sorted(set(item_window[s].tolist()))) for s in sequence]
        window_last = np.full(len(window_units), -1, dtype=np.int64)
        for k, ws in enumerate(batch_windows):
            window_last[list(ws)] = k
        self._plan = StreamPlan(epoch=epoch, items=items[sel], positions=pos[sel], bounds=bounds.astype(np.int64),
                                batch_windows=batch_windows, window_units=window_units,
                                window_next=np.array(window_next, dtype=np.int64), window_last=window_last)
        return self._plan


class StreamReader:
    """Per process: reads stream-mode batches from whole units (module docstring). Not shared across processes:
    a forked or unpickled copy starts empty."""

    def __init__(self, store: Any, prefetch: bool = True):
        self.store = store
        self.prefetch = bool(prefetch)
        self._pid = os.getpid()
        self._epoch = -1
        self._windows: dict[int, dict[int, Any]] = {}     # window -> {unit: FetchedUnit}
        self._pending: dict[int, Future] = {}             # window -> background fetch
        self._pool: ThreadPoolExecutor | None = None
        self.fetched_units = 0                            # counters, for tests and benchmarks
        self.fetched_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "prefetch": self.prefetch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["prefetch"])  # type: ignore[misc]

    def _reset(self, epoch: int) -> None:
        self._epoch = epoch
        self._windows = {}
        self._pending = {}  # a running fetch of the old epoch finishes unobserved

    def _fetch(self, units: np.ndarray) -> dict[int, Any]:
        got = self.store.fetch_units(units.tolist())
        return got

    def _window(self, plan: StreamPlan, w: int) -> dict[int, Any]:
        got = self._windows.get(w)
        if got is None:
            future = self._pending.pop(w, None)
            got = future.result() if future is not None else self._fetch(plan.window_units[w])
            self._windows[w] = got
            self.fetched_units += len(got)
            self.fetched_bytes += sum(u.nbytes for u in got.values())
        return got

    def _ahead(self, plan: StreamPlan, w: int) -> None:
        nxt = int(plan.window_next[w])
        if nxt < 0 or nxt in self._windows or nxt in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cellio-stream")
        self._pending[nxt] = self._pool.submit(self._fetch, plan.window_units[nxt])

    def read(self, plan: StreamPlan, b: int, rows: np.ndarray, crops: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """The windows (crops) of store rows `rows`, the items of batch b of `plan`."""
        if os.getpid() != self._pid:  # a forked copy: the parent's thread and bytes are not ours
            self.__init__(self.store, self.prefetch)  # type: ignore[misc]
        if plan.epoch != self._epoch:
            self._reset(plan.epoch)
        fetched: dict[int, Any] = {}
        for w in plan.batch_windows[b]:
            fetched.update(self._window(plan, w))
        if self.prefetch:
            for w in plan.batch_windows[b]:
                self._ahead(plan, w)
        for w in [w for w in self._windows if plan.window_last[w] <= b]:
            del self._windows[w]  # (the decode below still holds what it needs)
        if np.all(crops[:, 2:] == crops[0, 2:]):
            return self.store.read_fetched(fetched, rows, crop=crops)
        return [self.store.read_fetched(fetched, [int(r)], crop=c)[0] for r, c in zip(rows, crops)]
