"""Epoch order for one rank: shuffle(seed, epoch), optional balancing, rank sharding, last-batch policy, resume.

Pure numpy, no torch. Every rank builds the SAME global order from (seed, epoch) and takes its own strided share,
so with ``last_batch="partial"`` every item is seen exactly once per epoch across ranks (the way
``torch.utils.data.DistributedSampler`` does it, minus the padding). The policies:

* ``"partial"``: every item exactly once across ranks; ranks may differ by one item, the last batch may be short.
* ``"drop"``: every rank gets the same number of FULL batches; the global tail (< world_size * batch_size items)
  is dropped for this epoch (a different tail next epoch when shuffling). Each item at most once.
* ``"pad"``: the global order is extended by repeating its first items until every rank has the same number of
  full batches. Items repeat ONLY under this policy (and under balancing, which samples with replacement).

Resuming: the order of an epoch is a pure function of (seed, epoch, n, world_size, rank, batch_size, policy), so
a loader skips the batches it already yielded (``rank_order(epoch)[start:]``) and reproduces the rest exactly.
"""
from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np

from ._validate import parse_choice, parse_int
from .errors import PipelineConfigError

__all__ = ["LAST_BATCH_POLICIES", "BALANCE_MODES", "ShardedSampler", "balance_weights"]

log = logging.getLogger(__name__)

LAST_BATCH_POLICIES: tuple[str, ...] = ("drop", "pad", "partial")
BALANCE_MODES: tuple[str, ...] = ("class", "plate")
LastBatch = Literal["drop", "pad", "partial"]


def balance_weights(groups: Sequence | np.ndarray) -> np.ndarray:
    """Sampling weights ∝ 1 / size of each item's group (class id, or plate key), summing to 1."""
    keys = np.asarray(groups)
    if keys.ndim != 1 or len(keys) == 0:
        raise PipelineConfigError(f"balance groups: expected a non-empty 1-D sequence, found shape {keys.shape}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].astype(np.float64)
    return w / w.sum()


class ShardedSampler:
    """Per-epoch item order for one rank.

    ``n``: number of items (positions 0..n-1 into whatever the caller indexes: filtered sites, or TTA items).
    ``weights``: optional sampling weights (see :func:`balance_weights`); when given, each epoch draws ``n`` items
    with replacement (the same draw on every rank), so "exactly once" does not hold — that is what balancing means.
    """

    def __init__(self, n: int, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, last_batch: LastBatch = "partial", weights: np.ndarray | None = None):
        self.n = parse_int("n", n)
        if self.n < 1:
            raise PipelineConfigError(f"sampler: expected at least 1 item, found n={n} (did the filters remove "
                                      "every site?)")
        self.batch_size = parse_int("batch_size", batch_size, minimum=1)
        self.world_size = parse_int("world_size", world_size, minimum=1)
        self.rank = parse_int("rank", rank)
        if self.rank >= self.world_size:
            raise PipelineConfigError(f"rank: expected 0 <= rank < world_size={world_size}, found {rank}")
        self.last_batch: LastBatch = parse_choice("last_batch", last_batch, LAST_BATCH_POLICIES)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (self.n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                    or weights.sum() <= 0:
                raise PipelineConfigError(f"weights: expected {n} finite non-negative numbers with a positive sum, "
                                          f"found shape {weights.shape}")
            weights = weights / weights.sum()
        self.weights = weights
        self.seed = parse_int("seed", seed)  # numpy seeds are non-negative: fail here, not at the first batch
        self.shuffle = bool(shuffle)
        self.epoch = 0
        if self.last_batch == "drop" and self.n < self.world_size * self.batch_size:
            raise PipelineConfigError(
                f"last_batch='drop': {self.n} items cannot fill one batch of {self.batch_size} on each of "
                f"{self.world_size} ranks; use a smaller batch_size or last_batch='partial'/'pad'")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = parse_int("epoch", epoch)

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's order over all ranks (identical on every rank), before the last-batch policy."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0x5A4D])  # same stream on every rank
        if self.weights is not None:
            return rng.choice(self.n, size=self.n, replace=True, p=self.weights).astype(np.int64)
        if self.shuffle:
            return rng.permutation(self.n).astype(np.int64)
        return np.arange(self.n, dtype=np.int64)

    def _policy_total(self) -> int:
        """How many global positions the epoch uses after the last-batch policy."""
        step = self.world_size * self.batch_size
        if self.last_batch == "drop":
            return (self.n // step) * step
        if self.last_batch == "pad":
            return -(-self.n // step) * step
        return self.n

    def positions(self) -> np.ndarray:
        """This rank's global positions in the epoch order (what per-sample random draws are keyed on).

        The same in every epoch: they depend only on rank, world size and the last-batch policy, not on the order.
        """
        return np.arange(self.rank, self._policy_total(), self.world_size, dtype=np.int64)

    def rank_order(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(items, positions) for this rank: item ids in 0..n-1 and their global positions in the epoch.

        Under "pad", positions past n wrap around to the start of the order (repeats, by design).
        """
        order = self.global_order(epoch)
        pos = self.positions()
        return order[pos % self.n], pos

    def __len__(self) -> int:
        """Items this rank yields per epoch."""
        return len(self.positions())

    def num_batches(self) -> int:
        m = len(self)
        return m // self.batch_size if self.last_batch == "drop" else -(-m // self.batch_size)

    def state(self) -> dict:
        """What must match for a saved position in an epoch to mean the same thing on reload."""
        return {"n": self.n, "batch_size": self.batch_size, "rank": self.rank, "world_size": self.world_size,
                "seed": self.seed, "shuffle": self.shuffle, "last_batch": self.last_batch,
                "balanced": self.weights is not None}
