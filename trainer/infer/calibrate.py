"""Calibration of per-well scores before they are combined or assigned: softmax temperature fitted on out-of-fold
wells, and Sinkhorn balancing per plate.

Models trained for a few minutes are far from calibrated (a near-chance model may still be confident), and the
ensemble, the rotation inference and the plate assignment all read the scores as log-probabilities. Fitting one
temperature per model on its out-of-fold wells puts every model on the same scale (that is what lets a near-chance
model fall to a flat, harmless distribution), and the rotation inference's confidence becomes meaningful.

    t = fit_temperature(oof_wells, truth)          # minimises the out-of-fold negative log-likelihood
    test_lp = temper(test_wells, t)                # WellScores of kind "log_probs"
    balanced = sinkhorn(lp_block)                  # one plate: wells x allowed classes, rows and columns ~ 1
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cellio.errors import MetadataError

from trainer.infer.aggregate import WellScores, log_softmax

__all__ = ["fit_temperature", "temper", "nll", "sinkhorn", "TEMPERATURE_RANGE"]

log = logging.getLogger(__name__)

TEMPERATURE_RANGE = (0.05, 50.0)


def _labelled(ws: WellScores, truth: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `ws` with a truth label among its classes, and each row's truth column."""
    t = truth.reindex(pd.Index(ws.id_codes))
    col = pd.Index(ws.classes).get_indexer(t.fillna(-1).to_numpy(dtype=np.int64))
    rows = np.flatnonzero(t.notna().to_numpy() & (col >= 0))
    if not len(rows):
        raise MetadataError("no scored well has a truth label among the model's classes: nothing to calibrate on")
    return rows, col[rows]


def nll(ws: WellScores, truth: pd.Series, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class of the labelled wells at `temperature`."""
    rows, col = _labelled(ws, truth)
    lp = log_softmax(_base(ws)[rows] / temperature)
    return float(-lp[np.arange(len(rows)), col].mean())


def _base(ws: WellScores) -> np.ndarray:
    """Scores on a log scale: logits as they are, every other kind as log-probabilities."""
    return ws.scores.astype(np.float64) if ws.kind == "logits" else ws.log_probs().astype(np.float64)


def fit_temperature(ws: WellScores, truth: pd.Series) -> float:
    """The temperature T in TEMPERATURE_RANGE minimising the out-of-fold NLL of softmax(scores / T)."""
    from scipy.optimize import minimize_scalar

    rows, col = _labelled(ws, truth)
    base = _base(ws)[rows]

    def loss(log_t: float) -> float:
        lp = log_softmax(base / np.exp(log_t))
        return float(-lp[np.arange(len(rows)), col].mean())

    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    grid = np.linspace(lo, hi, 25)  # coarse grid first: the NLL in log T is unimodal but flat at the ends
    best = grid[int(np.argmin([loss(g) for g in grid]))]
    step = grid[1] - grid[0]
    res = minimize_scalar(loss, bounds=(max(lo, best - step), min(hi, best + step)), method="bounded",
                          options={"xatol": 1e-3})
    t = float(np.exp(res.x))
    log.info("temperature %.3f (out-of-fold NLL %.4f -> %.4f on %d wells)", t, loss(0.0), res.fun, len(rows))
    return t


def temper(ws: WellScores, temperature: float) -> WellScores:
    """log_softmax(scores / T) as WellScores of kind log_probs."""
    return WellScores(ws.id_codes, log_softmax(_base(ws) / temperature), ws.classes, "log_probs")


def sinkhorn(log_probs: np.ndarray, iterations: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Alternately normalise rows and columns of exp(log_probs) (wells x classes of one plate) so every well holds
    one unit of mass and every class the same share of the wells (n_wells / n_classes each: a plate has each class
    at most once); returns the balanced log-probabilities, rows summing to 1."""
    lp = np.asarray(log_probs, dtype=np.float64).copy()
    n, c = lp.shape
    if n == 0 or c == 0:
        return lp
    col_target = np.log(n / c)
    for _ in range(iterations):
        lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
        cols = np.logaddexp.reduce(lp, axis=0, keepdims=True)
        lp -= cols - col_target
        if np.max(np.abs(cols - col_target)) < tol:
            break
    lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return lp
