"""LightGBM stacker over TTA views, built to scale to 1108 classes.

For each well the top-k candidate classes of the mean logits are kept; each (well, candidate) pair becomes one
row of view statistics (mean/max/min/std logit over views, mean/max probability, vote share, rank, margins to the
best and to the next candidate, per-site mean logits, the well's entropy and view count, cell type). A binary
LightGBM model learns "this candidate is the truth"; a well's prediction is its best-scoring candidate. The model is
class-agnostic, so it transfers from validation experiments to test experiments.

Training data are out-of-fold per-view predictions (validation experiments of each fold's checkpoint).
`cross_fit` splits by experiment so the accuracy it reports is never measured on wells the stacker trained on.
The output is a full probability matrix: the mean-probability mass of the top-k candidates is redistributed in
proportion to the stacker's scores and the other classes keep their mean probability (capped below the best
candidate, then renormalised), so plate assignment still has a fallback for every class.

    python -m trainer.infer.stacker --train-predictions oof.npz --train-store train.zarr \
        --predictions test_preds.npz --store test.zarr --out stacked.npz
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError, MissingDependencyError

from trainer.infer.aggregate import (WellScores, group_views, load_sites, save_well_scores, softmax, well_mean,
                                     well_mean_of)
from trainer.infer.logits import LogitsFile, iter_rows
from trainer.infer.report import truth_of
from trainer.training.layout import layout_of

__all__ = ["FEATURES", "StackerFeatures", "Stacker", "build_features", "fit_stacker", "cross_fit", "main"]

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = (
    "mean_logit", "max_logit", "min_logit", "std_logit", "mean_prob", "max_prob", "mean_log_prob",
    "vote_share", "rank", "gap_to_best", "gap_to_next", "site1_mean_logit", "site2_mean_logit",
    "well_entropy", "n_views", "cell_type",
)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 20,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbose": -1,
}


@dataclass(frozen=True)
class StackerFeatures:
    id_codes: np.ndarray     # (n_wells,) sorted
    candidates: np.ndarray   # (n_wells, k) raw sirna ids, best mean logit first
    X: np.ndarray            # (n_wells, k, len(FEATURES)) float32
    mean_probs: np.ndarray   # (n_wells, C) fallback probabilities
    classes: np.ndarray      # (C,)
    experiments: np.ndarray  # (n_wells,) experiment of each well
    candidate_set: np.ndarray | None = None  # the classes candidates were limited to (None = all)

    @property
    def top_k(self) -> int:
        return self.candidates.shape[1]


def _lse(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def build_features(logits: np.ndarray, index: np.ndarray, sites: pd.DataFrame, *,
                   classes: Sequence[int] | np.ndarray, top_k: int = 10,
                   candidates: Sequence[int] | None = None) -> StackerFeatures:
    """Per (well, top-k candidate) view statistics from per-view logits (`index` = rows of `sites`).

    `candidates` (raw sirna ids, e.g. the treatment classes) limits which classes may be candidates, so a model
    with controls as extra outputs does not spend candidate slots on labels a treatment well cannot have.
    """
    logits = logits if isinstance(logits, LogitsFile) else np.asarray(logits)
    index = np.asarray(index, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    if logits.ndim != 2 or logits.shape != (len(index), len(classes)):
        raise ConfigError(f"logits must be (n_views={len(index)}, C={len(classes)}), found {logits.shape}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, found {top_k}")
    k = min(top_k, len(classes))
    g = group_views(index, sites)
    ids, order, starts, counts = g.id_codes, g.order, g.starts, g.counts
    n = len(ids)
    well_of_view = np.empty(len(index), dtype=np.int64)
    well_of_view[order] = np.repeat(np.arange(n), counts)

    # Per-well means over all classes (needed for candidates and for the fallback distribution).
    mean_logit_all = well_mean(logits, g, desc="stacker: mean logits")
    mean_prob_all = well_mean_of(softmax, logits, g, desc="stacker: mean probs").astype(np.float64)

    ranked = mean_logit_all
    if candidates is not None:
        allowed = np.isin(classes, np.asarray(candidates, dtype=np.int64))
        if not allowed.any():
            raise ConfigError("build_features: none of `candidates` is a class of the model")
        k = min(k, int(allowed.sum()))
        ranked = np.where(allowed[None, :], mean_logit_all, -np.inf)
    cand_col = np.argsort(-ranked, axis=1, kind="stable")[:, :k]                   # (n, k) column ids
    # Each view's logits at its well's candidates, their log-probabilities and votes: (n_views, k), one pass.
    v_logit = np.empty((len(index), k), dtype=np.float64)
    v_logp = np.empty((len(index), k), dtype=np.float64)
    v_vote = np.empty((len(index), k), dtype=np.float64)
    for lo, block in iter_rows(logits, desc="stacker: candidates"):
        cand = cand_col[well_of_view[lo:lo + len(block)]]
        v = np.take_along_axis(block, cand, axis=1).astype(np.float64)
        v_logit[lo:lo + len(block)] = v
        v_logp[lo:lo + len(block)] = v - _lse(block)[:, None]
        v_vote[lo:lo + len(block)] = np.argmax(block, axis=1)[:, None] == cand

    srt = v_logit[order]
    mx = np.maximum.reduceat(srt, starts, axis=0)
    mn = np.minimum.reduceat(srt, starts, axis=0)
    mean = np.add.reduceat(srt, starts, axis=0) / counts[:, None]
    sq = np.add.reduceat(srt ** 2, starts, axis=0) / counts[:, None]
    std = np.sqrt(np.clip(sq - mean ** 2, 0.0, None))
    p_srt = np.exp(v_logp[order])
    mean_p = np.add.reduceat(p_srt, starts, axis=0) / counts[:, None]
    max_p = np.maximum.reduceat(p_srt, starts, axis=0)
    mean_lp = np.add.reduceat(v_logp[order], starts, axis=0) / counts[:, None]
    votes = np.add.reduceat(v_vote[order], starts, axis=0) / counts[:, None]

    site_no = sites["site"].to_numpy()[index]
    site_means = []
    for s in (1, 2):
        acc = np.zeros((n, k))
        cnt = np.zeros(n)
        sel = site_no == s
        np.add.at(acc, well_of_view[sel], v_logit[sel])
        np.add.at(cnt, well_of_view[sel], 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            site_means.append(np.where(cnt[:, None] > 0, acc / cnt[:, None], np.nan))

    rank = np.broadcast_to(np.arange(k, dtype=np.float64), (n, k))
    best = mean[:, :1]
    nxt = np.concatenate([mean[:, 1:], np.full((n, 1), np.nan)], axis=1)
    entropy = -(mean_prob_all * np.log(mean_prob_all + 1e-12)).sum(axis=1)
    first_row = order[starts]
    meta = sites.iloc[index[first_row]]
    cell = pd.Categorical(meta["cell_type"], categories=list(layout_of(sites).cell_types)).codes.astype(np.float64)
    X = np.stack([
        mean, mx, mn, std, mean_p, max_p, mean_lp, votes, rank, mean - best, mean - nxt,
        site_means[0], site_means[1],
        np.repeat(entropy[:, None], k, axis=1), np.repeat(counts[:, None].astype(np.float64), k, axis=1),
        np.repeat(cell[:, None], k, axis=1),
    ], axis=2).astype(np.float32)
    return StackerFeatures(ids, classes[cand_col], X, mean_prob_all.astype(np.float32), classes,
                           meta["experiment"].to_numpy(dtype=object),
                           None if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64)))


def _targets(features: StackerFeatures, truth: Mapping[str, int] | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(rows of wells with a truth, (n, k) 0/1 labels)."""
    truth = pd.Series(truth)
    have = pd.Index(features.id_codes).isin(truth.index)
    if not have.any():
        raise MetadataError("none of the feature wells has a truth label; pass id_code -> sirna of those wells")
    rows = np.flatnonzero(have)
    t = truth.loc[features.id_codes[rows]].to_numpy(dtype=np.int64)
    y = (features.candidates[rows] == t[:, None]).astype(np.float32)
    return rows, y


@dataclass
class Stacker:
    """A fitted binary LightGBM model over candidate rows."""

    booster: Any
    top_k: int
    params: dict[str, Any] = field(default_factory=dict)
    feature_names: tuple[str, ...] = FEATURES
    candidates: tuple[int, ...] | None = None  # build test features with the same candidate classes

    def candidate_scores(self, features: StackerFeatures) -> np.ndarray:
        """(n_wells, k) stacker probability that each candidate is the truth."""
        if features.top_k != self.top_k:
            raise ConfigError(f"features were built with top_k={features.top_k}, the stacker with {self.top_k}")
        n, k, f = features.X.shape
        return self.booster.predict(features.X.reshape(n * k, f)).reshape(n, k)

    def predict(self, features: StackerFeatures) -> WellScores:
        """Full per-well probabilities: the top-k mass redistributed by the stacker's scores."""
        s = np.clip(self.candidate_scores(features), 1e-9, None)
        probs = features.mean_probs.astype(np.float64).copy()
        n = len(features.id_codes)
        col = pd.Index(features.classes).get_indexer(features.candidates.ravel()).reshape(n, -1)
        mass = np.take_along_axis(probs, col, axis=1).sum(axis=1, keepdims=True)
        cand = mass * s / s.sum(axis=1, keepdims=True)
        # Candidates are the top-k by mean logit, not by mean prob, so cap the other classes just below the best
        # candidate: the argmax is always the stacker's choice, and every class keeps a fallback score.
        probs = np.minimum(probs, 0.99 * cand.max(axis=1, keepdims=True))
        np.put_along_axis(probs, col, cand, axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
        return WellScores(features.id_codes, probs.astype(np.float32), features.classes, "probs")


def fit_stacker(features: StackerFeatures, truth: Mapping[str, int] | pd.Series, *, seed: int = 0,
                num_boost_round: int = 200, params: Mapping[str, Any] | None = None) -> Stacker:
    """Fit on the wells of `features` that have a truth (id_code -> sirna)."""
    try:
        import lightgbm as lgb
    except ImportError as exc:  # pragma: no cover - lightgbm is in the train extra
        raise MissingDependencyError("lightgbm", "train", "the stacker") from exc
    rows, y = _targets(features, truth)
    if y.sum() == 0:
        raise MetadataError(f"no training well has its true class among the top-{features.top_k} candidates; "
                            f"raise top_k or check that truth and predictions refer to the same sirna ids")
    p = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
    n, k, f = features.X[rows].shape
    data = lgb.Dataset(features.X[rows].reshape(n * k, f), label=y.ravel(), feature_name=list(FEATURES),
                       categorical_feature=["cell_type"], free_raw_data=True)
    booster = lgb.train(p, data, num_boost_round=num_boost_round)
    log.info("stacker fitted on %d wells (%d candidate rows, %d positives)", n, n * k, int(y.sum()))
    cand = None if features.candidate_set is None else tuple(int(c) for c in features.candidate_set)
    return Stacker(booster, features.top_k, p, FEATURES, cand)


def cross_fit(features: StackerFeatures, truth: Mapping[str, int] | pd.Series, *, n_splits: int = 4,
              seed: int = 0, num_boost_round: int = 200, params: Mapping[str, Any] | None = None,
              progress: bool = False) -> WellScores:
    """Out-of-fold stacker predictions for the wells with a truth, split by experiment.

    With fewer than two experiments the split falls back to (experiment, plate) so it still never scores a well
    the model trained on.
    """
    from tqdm.auto import tqdm

    rows, _ = _targets(features, truth)
    groups = features.experiments[rows]
    if len(np.unique(groups)) < 2:
        plates = pd.Series(features.id_codes[rows]).str.rsplit("_", n=1).str[0].to_numpy()
        log.warning("cross_fit: one experiment only; splitting by plate instead")
        groups = plates
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ConfigError("cross_fit needs wells from at least two experiments or plates")
    n_splits = min(n_splits, len(uniq))
    fold_of = {g: i % n_splits for i, g in enumerate(np.random.default_rng(seed).permutation(uniq))}
    fold = np.array([fold_of[g] for g in groups])
    probs = np.zeros((len(rows), len(features.classes)), dtype=np.float32)
    sub_ids = features.id_codes[rows]
    for f in tqdm(range(n_splits), desc="stacker folds", disable=not progress):
        tr, te = rows[fold != f], rows[fold == f]
        model = fit_stacker(_subset(features, tr), truth, seed=seed, num_boost_round=num_boost_round,
                            params=params)
        probs[fold == f] = model.predict(_subset(features, te)).scores
    return WellScores(sub_ids, probs, features.classes, "probs")


def _subset(features: StackerFeatures, rows: np.ndarray) -> StackerFeatures:
    return StackerFeatures(features.id_codes[rows], features.candidates[rows], features.X[rows],
                           features.mean_probs[rows], features.classes, features.experiments[rows],
                           features.candidate_set)


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.infer.predict import load_predictions

    p = argparse.ArgumentParser(prog="python -m trainer.infer.stacker", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-predictions", required=True, help="out-of-fold per-view .npz (labelled wells)")
    p.add_argument("--train-store", required=True, help="store of the out-of-fold predictions (labels)")
    p.add_argument("--predictions", help="per-view .npz to apply the stacker to (e.g. test)")
    p.add_argument("--store", help="store of --predictions")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oof-out", help="write cross-fitted out-of-fold well scores here (.npz)")
    p.add_argument("--out", help="write stacked well scores of --predictions here (.npz)")
    args = p.parse_args(argv)

    train_sites = load_sites(args.train_store)
    oof = load_predictions(args.train_predictions)
    truth = truth_of(train_sites)
    feats = build_features(oof.logits, oof.index, train_sites, classes=oof.classes, top_k=args.top_k,
                           candidates=np.unique(truth.to_numpy()))
    if args.oof_out:
        cv = cross_fit(feats, truth, seed=args.seed, num_boost_round=args.rounds)
        acc = float((cv.labels() == truth.loc[cv.id_codes].to_numpy()).mean())
        save_well_scores(cv, args.oof_out)
        print(f"cross-fitted stacker accuracy on {len(cv)} wells: {acc:.4f} -> {args.oof_out}")
    if args.predictions:
        if not (args.store and args.out):
            raise ConfigError("--predictions needs --store and --out")
        model = fit_stacker(feats, truth, seed=args.seed, num_boost_round=args.rounds)
        pr = load_predictions(args.predictions)
        test_feats = build_features(pr.logits, pr.index, load_sites(args.store), classes=pr.classes,
                                    top_k=args.top_k, candidates=model.candidates)
        save_well_scores(model.predict(test_feats), args.out)
        print(f"stacked {len(test_feats.id_codes)} wells -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
