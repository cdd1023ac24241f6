"""Per-view logits -> per-well scores and model ensembling.

A well is an `id_code`: both of its sites and every TTA view of each site are pooled. Every method returns a
`WellScores` (one row per well, one column per raw sirna id in `classes`); `kind` says what the numbers are so
later steps (assignment, the stacker, ensembling) can turn them into log-probabilities consistently.

    wells = mean_logits(logits, index, sites, classes=classes)
    wells.labels()                # argmax sirna per well

Note: the geometric mean of the views' softmax probabilities, renormalised, equals the softmax of the mean logits
(log_softmax(z) = z - logsumexp(z), and the mean of the per-view constants cancels), so `geometric_mean` and
`mean_logits` always agree on the argmax; both are kept so the report shows the identity (a test checks it).

Every method walks the views in row blocks (trainer.infer.logits.iter_rows), so `logits` may be an array or a
LogitsFile on disk (the main job's predictions): memory grows with the wells x classes, not with the views.

    python -m trainer.infer.aggregate --predictions preds.npz --store test.zarr --method mean_logits --out wells.npz
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError

from trainer.infer.logits import LogitsFile, iter_rows
from trainer.training.disk import replaced_atomically

__all__ = [
    "WellScores",
    "METHODS",
    "log_softmax",
    "softmax",
    "single_view",
    "mean_logits",
    "mean_probs",
    "geometric_mean",
    "majority_vote",
    "aggregate",
    "ViewGroups",
    "group_views",
    "well_mean",
    "well_mean_of",
    "ensemble",
    "save_well_scores",
    "load_well_scores",
    "main",
]

log = logging.getLogger(__name__)

# What a score matrix holds; `WellScores.log_probs()` maps each to log-probabilities.
KINDS = ("logits", "probs", "log_probs", "votes")


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return (z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis=axis))


@dataclass(frozen=True)
class WellScores:
    """Scores of every well over `classes` (raw sirna ids); higher is better for every kind."""

    id_codes: np.ndarray  # (n_wells,) str, sorted
    scores: np.ndarray    # (n_wells, C) float32
    classes: np.ndarray   # (C,) int64 raw sirna id of each column
    kind: str = "logits"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"WellScores.kind must be one of {KINDS}, found {self.kind!r}")
        if self.scores.ndim != 2 or self.scores.shape != (len(self.id_codes), len(self.classes)):
            raise ConfigError(
                f"WellScores.scores must have shape (n_wells={len(self.id_codes)}, C={len(self.classes)}), "
                f"found {self.scores.shape}")

    def __len__(self) -> int:
        return len(self.id_codes)

    def log_probs(self) -> np.ndarray:
        """(n_wells, C) log-probabilities, renormalised over `classes`."""
        if self.kind == "logits" or self.kind == "log_probs":
            return log_softmax(self.scores)
        # probs and votes (vote counts plus a < 1 tie-break) are non-negative masses.
        mass = np.clip(self.scores.astype(np.float64), 0.0, None) + 1e-12
        return np.log(mass / mass.sum(axis=1, keepdims=True)).astype(np.float32)

    def labels(self) -> np.ndarray:
        """Argmax raw sirna id per well over every class, controls included; for treatment wells use
        `trainer.infer.assign.predict_labels`, which chooses among treatment classes only."""
        return self.classes[np.argmax(self.scores, axis=1)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"id_code": self.id_codes, "sirna": self.labels()})

    def select(self, id_codes: Sequence[str]) -> WellScores:
        """The rows of `id_codes`, in that order; raises if one is missing."""
        pos = pd.Index(self.id_codes).get_indexer(pd.Index(id_codes))
        if (pos < 0).any():
            missing = list(np.asarray(id_codes)[pos < 0][:5])
            raise MetadataError(f"wells {missing} (of {int((pos < 0).sum())}) have no scores")
        return WellScores(np.asarray(id_codes, dtype=object), self.scores[pos], self.classes, self.kind)


# ---------------------------------------------------------------------------------------------------------------
# Grouping views into wells


@dataclass(frozen=True)
class ViewGroups:
    """View rows grouped by well (sorted id_code)."""

    id_codes: np.ndarray  # (n_wells,) sorted well ids
    order: np.ndarray     # view rows sorted by well
    starts: np.ndarray    # first position in `order` of each well
    counts: np.ndarray    # views per well
    codes: np.ndarray     # (n_views,) the well (position in id_codes) of each view row


def _check_inputs(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, classes: np.ndarray) -> None:
    if logits.ndim != 2 or len(logits) != len(index):
        raise ConfigError(f"logits must be (n_views, C) with one row per index entry; found logits "
                          f"{logits.shape} and index {np.shape(index)}")
    if logits.shape[1] != len(classes):
        raise ConfigError(f"logits have {logits.shape[1]} columns but classes has {len(classes)} entries")
    if len(index) and (np.min(index) < 0 or np.max(index) >= len(sites)):
        raise MetadataError(f"view index out of range: found {int(np.min(index))}..{int(np.max(index))}, the "
                            f"site table has {len(sites)} rows")


def group_views(index: np.ndarray, sites: pd.DataFrame) -> ViewGroups:
    index = np.asarray(index, dtype=np.int64)
    # Factorize the distinct sites' wells, not one string per view (72 views per site at full TTA).
    site_rows, inverse = np.unique(index, return_inverse=True)
    site_codes, uniques = pd.factorize(sites["id_code"].to_numpy()[site_rows], sort=True)
    codes = np.asarray(site_codes, dtype=np.int64)[inverse.ravel()]
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ViewGroups(np.asarray(uniques, dtype=object), order, starts, counts, codes)


def well_sums(values: np.ndarray | LogitsFile, g: ViewGroups, fn: Callable[[np.ndarray], np.ndarray] | None = None,
              desc: str | None = None) -> np.ndarray:
    """(n_wells, C) float64 per-well sums of `values` rows (after the row-wise `fn`), walking the rows in blocks:
    nothing of the size of `values` is ever made."""
    out = np.zeros((len(g.id_codes), values.shape[1]), dtype=np.float64)
    for lo, block in iter_rows(values, desc=desc):
        if fn is not None:
            block = fn(block)
        c = g.codes[lo:lo + len(block)]
        if len(c) > 1 and (c[1:] < c[:-1]).any():  # (the loader's views come well by well: usually sorted)
            o = np.argsort(c, kind="stable")
            c, block = c[o], block[o]
        run = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        out[c[run]] += np.add.reduceat(block.astype(np.float64), run, axis=0)
    return out


def well_mean(values: np.ndarray | LogitsFile, g: ViewGroups, desc: str | None = None) -> np.ndarray:
    """Per-well mean of `values` rows (float32), in row blocks."""
    return (well_sums(values, g, desc=desc) / g.counts[:, None]).astype(np.float32)


def _as_arrays(logits: np.ndarray | LogitsFile, index: np.ndarray, classes: Sequence[int] | np.ndarray
               ) -> tuple[np.ndarray | LogitsFile, np.ndarray, np.ndarray]:
    return (logits if isinstance(logits, LogitsFile) else np.asarray(logits), np.asarray(index, dtype=np.int64),
            np.asarray(classes, dtype=np.int64))


def mean_logits(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
                classes: Sequence[int] | np.ndarray) -> WellScores:
    """Mean of the raw logits over both sites and every view (the winners' TTA)."""
    logits, index, classes = _as_arrays(logits, index, classes)
    _check_inputs(logits, index, sites, classes)
    g = group_views(index, sites)
    return WellScores(g.id_codes, well_mean(logits, g, desc="mean logits"), classes, "logits")


def well_mean_of(fn: Callable[[np.ndarray], np.ndarray], logits: np.ndarray | LogitsFile, g: ViewGroups,
                 desc: str | None = None) -> np.ndarray:
    """Per-well mean of a row-wise transform of the rows, block by block (float32)."""
    return (well_sums(logits, g, fn, desc=desc) / g.counts[:, None]).astype(np.float32)


def mean_probs(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
               classes: Sequence[int] | np.ndarray) -> WellScores:
    """Mean of the per-view softmax probabilities."""
    logits, index, classes = _as_arrays(logits, index, classes)
    _check_inputs(logits, index, sites, classes)
    g = group_views(index, sites)
    return WellScores(g.id_codes, well_mean_of(softmax, logits, g, desc="mean probs"), classes, "probs")


def geometric_mean(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
                   classes: Sequence[int] | np.ndarray) -> WellScores:
    """Geometric mean of the per-view probabilities (mean log-probability), renormalised."""
    logits, index, classes = _as_arrays(logits, index, classes)
    _check_inputs(logits, index, sites, classes)
    g = group_views(index, sites)
    return WellScores(g.id_codes, log_softmax(well_mean_of(log_softmax, logits, g, desc="geometric mean")), classes,
                      "log_probs")


def majority_vote(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
                  classes: Sequence[int] | np.ndarray) -> WellScores:
    """Each view votes for its argmax class; ties go to the higher mean probability.

    Score = votes + 0.5 * mean probability: the tie-break term is < 1, so it never outweighs a whole vote.
    """
    logits, index, classes = _as_arrays(logits, index, classes)
    _check_inputs(logits, index, sites, classes)
    g = group_views(index, sites)
    votes = np.zeros((len(g.id_codes), len(classes)), dtype=np.float64)
    for lo, block in iter_rows(logits, desc="votes"):
        np.add.at(votes, (g.codes[lo:lo + len(block)], np.argmax(block, axis=1)), 1.0)
    votes = votes + 0.5 * well_mean_of(softmax, logits, g, desc="vote tie-breaks")
    return WellScores(g.id_codes, votes.astype(np.float32), classes, "votes")


def single_view(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
                classes: Sequence[int] | np.ndarray, view: np.ndarray) -> WellScores:
    """The baseline: one prediction per well from view 0 of its lowest-numbered site (site 1 when present)."""
    logits, index, classes = _as_arrays(logits, index, classes)
    view = np.asarray(view, dtype=np.int64)
    _check_inputs(logits, index, sites, classes)
    if view.shape != index.shape:
        raise ConfigError(f"view must have one entry per index entry; found {view.shape} and {index.shape}")
    site_no = sites["site"].to_numpy()[index]
    wells = sites["id_code"].to_numpy()[index]
    frame = pd.DataFrame({"well": wells, "site": site_no, "view": view, "row": np.arange(len(index))})
    first = frame.sort_values(["well", "site", "view", "row"]).drop_duplicates("well", keep="first")
    return WellScores(first["well"].to_numpy(dtype=object),
                      np.asarray(logits[first["row"].to_numpy()], dtype=np.float32), classes, "logits")


METHODS: dict[str, Callable[..., WellScores]] = {
    "mean_logits": mean_logits,
    "mean_probs": mean_probs,
    "geometric_mean": geometric_mean,
    "majority_vote": majority_vote,
}


def aggregate(method: str, logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
              classes: Sequence[int] | np.ndarray, view: np.ndarray | None = None) -> WellScores:
    """Dispatch by name: one of METHODS or 'single_view' (which needs `view`)."""
    if method == "single_view":
        if view is None:
            raise ConfigError("aggregate('single_view', ...) needs the per-row `view` ids")
        return single_view(logits, index, sites, classes=classes, view=view)
    if method not in METHODS:
        raise ConfigError(f"unknown aggregation method {method!r}; expected one of "
                          f"{['single_view', *METHODS]}")
    return METHODS[method](logits, index, sites, classes=classes)


# ---------------------------------------------------------------------------------------------------------------
# Ensembling


def ensemble(members: Sequence[WellScores], weights: Sequence[float] | None = None, *,
             classes: str = "union") -> WellScores:
    """Weighted mean of several models' per-well scores, aligned by raw sirna id.

    Logits are averaged as logits (the winners' choice); any other kind is averaged as log-probabilities. Models
    with different class maps (e.g. with and without the 31 controls) are aligned by sirna: with
    `classes="union"` a column is the weighted mean over the models that have it (weights renormalised per
    column); with `"intersection"` only classes every model has are kept. Every model must score the same wells.
    """
    if not members:
        raise ConfigError("ensemble() needs at least one WellScores")
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"ensemble weights must be {len(members)} non-negative numbers with a positive sum; "
                          f"found {list(np.atleast_1d(w))}")
    if classes not in ("union", "intersection"):
        raise ConfigError(f"ensemble classes must be 'union' or 'intersection', found {classes!r}")
    wells = members[0].id_codes
    for i, m in enumerate(members[1:], start=1):
        if len(m) != len(wells) or set(m.id_codes) != set(wells):
            raise MetadataError(f"ensemble member {i} scores {len(m)} wells, member 0 scores {len(wells)}; "
                                f"predict every model on the same wells")
    all_logits = all(m.kind == "logits" for m in members)
    if classes == "union":
        cls = np.unique(np.concatenate([m.classes for m in members]))
    else:
        cls = members[0].classes
        for m in members[1:]:
            cls = np.intersect1d(cls, m.classes)
        if len(cls) == 0:
            raise ConfigError("ensemble members share no class")
    total = np.zeros((len(wells), len(cls)), dtype=np.float64)
    wsum = np.zeros(len(cls), dtype=np.float64)
    for m, wi in zip(members, w):
        m = m.select(wells)
        vals = m.scores if all_logits else m.log_probs()
        col = pd.Index(cls).get_indexer(pd.Index(m.classes))
        keep = col >= 0
        total[:, col[keep]] += wi * vals[:, keep]
        wsum[col[keep]] += wi
    out = (total / np.where(wsum > 0, wsum, 1.0)).astype(np.float32)
    return WellScores(np.asarray(wells, dtype=object), out, cls.astype(np.int64),
                      "logits" if all_logits else "log_probs")


# ---------------------------------------------------------------------------------------------------------------
# Files


def save_well_scores(wells: WellScores, path: str | Path) -> Path:
    """Write `.npz` with id_codes, scores, classes and kind (atomic: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path, suffix=".npz") as tmp:
        np.savez(tmp, id_codes=wells.id_codes.astype(str), scores=wells.scores, classes=wells.classes,
                 kind=np.array(wells.kind))
    return path


def load_well_scores(path: str | Path) -> WellScores:
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"well scores file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        missing = {"id_codes", "scores", "classes", "kind"} - set(z.files)
        if missing:
            raise MetadataError(f"{path} is not a well scores file: missing arrays {sorted(missing)}")
        return WellScores(z["id_codes"].astype(object), z["scores"], z["classes"].astype(np.int64),
                          str(z["kind"]))


def load_sites(store: str | Path | None = None, data: str | Path | None = None) -> pd.DataFrame:
    """The site table from a cellio store (row i <-> image i, what `index` refers to) or a raw data set."""
    import cellio

    if store is not None:
        return cellio.open_store(store).sites
    if data is not None:
        return cellio.read_metadata(data)
    raise ConfigError("give --store (the store the predictions were made on) or --data")


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.infer.predict import load_predictions

    p = argparse.ArgumentParser(prog="python -m trainer.infer.aggregate", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", required=True, nargs="+", help="per-view .npz files from trainer.infer.predict")
    p.add_argument("--weights", type=float, nargs="+", help="ensemble weights, one per predictions file")
    p.add_argument("--store", help="the store the predictions were made on (its site table)")
    p.add_argument("--data", help="or the raw data set directory")
    p.add_argument("--method", default="mean_logits", choices=["single_view", *METHODS])
    p.add_argument("--out", required=True, help="output .npz of per-well scores")
    args = p.parse_args(argv)
    sites = load_sites(args.store, args.data)
    members = []
    for f in args.predictions:
        pr = load_predictions(f)
        members.append(aggregate(args.method, pr.logits, pr.index, sites, classes=pr.classes, view=pr.view))
    wells = members[0] if len(members) == 1 else ensemble(members, args.weights)
    save_well_scores(wells, args.out)
    print(f"{len(wells)} wells x {len(wells.classes)} classes ({args.method}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
