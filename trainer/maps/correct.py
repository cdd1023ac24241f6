"""Batch correction of well profiles, fitted on the negative controls (RxRx3-core: `EMPTY_control` wells).

The definitions follow Recursion's EFAAR pipeline (`efaar_benchmarking.efaar`, version 1.0 on PyPI, and its
RxRx3-core notebook); that module imports scvi-tools at the top, so it is not imported here, and
tests/test_maps.py checks these functions against it where it can be loaded:

  centerscale  `centerscale_on_controls`: per batch, subtract the controls' mean and divide by their standard
               deviation (sklearn's StandardScaler fitted on the batch's controls, applied to the whole batch).
  pca_cs       PCA-centre-scale (`pca_centerscale_on_controls`, what the RxRx3-core notebook runs with
               batch = experiment_name): a PCA fitted on all control wells, then centerscale per batch. The
               source of that function was not available to us; this is its documented definition ("PCA fitted on
               controls, then centre/scale on controls") built from the two steps tvn_on_controls shares with it.
  tvn          typical variation normalisation (`tvn_on_controls`): centerscale on the controls, a PCA fitted on
               the controls, centerscale on the controls again, so the controls' covariance becomes the identity
               (whitening); then optionally CORAL per batch (`coral_align`). EFAAR centres the first step on the
               pooled controls; with `batch` set, each batch is centred on its own controls first (the step
               pca_cs uses), which removes a batch's offset that whitening alone keeps. `batch=None` is EFAAR's.
  coral        CORAL (correlation alignment): each batch's profiles are multiplied by
               (C_batch + r I)^(-1/2) (C_pooled + r I)^(1/2), so its controls' covariance matches the pooled
               controls'. EFAAR's tvn_on_controls uses the first factor with r = 0.5 (its target is the identity,
               which after TVN is the pooled covariance up to a constant, so cosines are the same).

  embed        EFAAR's `embed_by_pca`, the dimension reduction its maps of CellProfiler features use before TVN
               ("CP-PCA128-TVN"): standardise (per batch, or over all wells), then a PCA fitted on all wells. Not a
               correction of its own: MapSpec.embed_dims runs it before any correction when there are more
               features than that. Whitening (pca_cs, tvn) estimates one scale per component from the controls, so
               with about as many features as control wells it mostly amplifies noise: a warning says so.

Every fitted step needs at least `MIN_CONTROLS` controls in each batch; a batch with fewer is refused with a
MissingControlsError naming it (nothing is fitted on a batch without controls).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainer.maps.errors import MapInputError, MissingControlsError
from trainer.maps.profiles import WellProfiles

__all__ = ["CORRECTIONS", "MIN_CONTROLS", "CORAL_REG", "CONTROLS_PER_DIM", "auto_embed_dims", "batch_keys",
           "control_mask", "centerscale_on_controls", "pca_centerscale_on_controls", "tvn_on_controls", "coral_align",
           "embed_by_pca", "correct"]

log = logging.getLogger(__name__)

CORRECTIONS = ("none", "centerscale", "pca_cs", "tvn")
MIN_CONTROLS = 2   # a standard deviation or covariance needs two wells
CORAL_REG = 0.5    # EFAAR tvn_on_controls: np.cov(controls) + 0.5 * I before the inverse square root


def batch_keys(metadata: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One string per well naming its batch: the values of `columns` joined with '/' (e.g. 'gene-001/3' for
    experiment_name + plate: RxRx3-core's plate numbers repeat across experiments, so a plate needs both)."""
    missing = [c for c in columns if c not in metadata.columns]
    if missing:
        raise MapInputError(f"batch columns {missing} are not in the well metadata {list(metadata.columns)}")
    if not columns:
        raise MapInputError("batch columns: give at least one column (or no batch at all)")
    return metadata[list(columns)].astype(str).agg("/".join, axis=1).to_numpy()


def control_mask(metadata: pd.DataFrame, column: str, label: str) -> np.ndarray:
    if column not in metadata.columns:
        raise MapInputError(f"controls: the well metadata has no column {column!r}")
    mask = (metadata[column] == label).to_numpy()
    if not mask.any():
        seen = sorted(map(str, metadata[column].unique()))[:8]
        raise MissingControlsError(f"controls: no well has {column} == {label!r}; control-based corrections need "
                                   f"negative controls (values seen: {seen})")
    return mask


def _batches(n: int, batches: np.ndarray | None) -> list[tuple[str | None, np.ndarray]]:
    if batches is None:
        return [(None, np.ones(n, bool))]
    batches = np.asarray(batches)
    if len(batches) != n:
        raise MapInputError(f"batches: {len(batches)} labels for {n} wells")
    return [(b, batches == b) for b in pd.unique(batches)]


def _check_controls(controls: np.ndarray, members: np.ndarray, batch: str | None, step: str) -> None:
    n = int((controls & members).sum())
    if n < MIN_CONTROLS:
        where = f"batch {batch!r}" if batch is not None else "the data set"
        raise MissingControlsError(f"{step}: {where} has {n} negative-control well(s); at least {MIN_CONTROLS} are "
                                   f"needed to fit the correction on it (drop the batch or add controls)")


def centerscale_on_controls(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None,
                            scale: bool = True, step: str = "centerscale") -> np.ndarray:
    """Per batch (or pooled when `batches` is None): (x - mean of the batch's controls) / their std (ddof 0; a
    zero std is left at 1, as StandardScaler does)."""
    from sklearn.preprocessing import StandardScaler

    out = np.array(x, dtype=np.float64, copy=True)
    for batch, members in _batches(len(x), batches):
        _check_controls(controls, members, batch, step)
        scaler = StandardScaler(with_std=scale).fit(out[members & controls])
        out[members] = scaler.transform(out[members])
    return out


def embed_by_pca(x: np.ndarray, n_components: int, batches: np.ndarray | None = None) -> np.ndarray:
    """EFAAR's embed_by_pca: standardise every feature (per batch when `batches`, over all wells otherwise; no
    controls involved), then keep the first `n_components` components of a PCA fitted on all wells."""
    from sklearn.preprocessing import StandardScaler

    z = np.array(x, dtype=np.float64, copy=True)
    for _, members in _batches(len(x), batches):
        z[members] = StandardScaler().fit_transform(z[members])
    return _fit_pca(z, n_components).transform(z)


def _warn_if_underdetermined(n_features: int, controls: np.ndarray, step: str) -> None:
    if n_features > int(controls.sum()) // 2:
        log.warning("%s: %d features but %d control wells: the controls' per-component scales are poorly estimated "
                    "and whitening amplifies noise; reduce the dimension first (MapSpec.embed_dims)", step,
                    n_features, int(controls.sum()))


# embed_dims="auto": whitening estimates a scale per dimension from the control wells; with four or more control
# wells a dimension those scales hold (docs/maps.md: a trained network's 88 features on 120 controls lost a third
# of their CORUM recall under TVN at 60 dimensions, none at 32)
CONTROLS_PER_DIM = 4


def auto_embed_dims(n_controls: int) -> int:
    """The dimension embed_dims="auto" reduces to: a quarter of the control wells (at least 2)."""
    return max(2, n_controls // CONTROLS_PER_DIM)


def _fit_pca(x: np.ndarray, n_components: int | None):
    from sklearn.decomposition import PCA

    # PCA() with every component, as EFAAR; a fixed random_state keeps a truncated (randomized) fit reproducible
    return PCA(n_components, random_state=0).fit(x)


def pca_centerscale_on_controls(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None,
                                n_components: int | None = None) -> np.ndarray:
    """PCA fitted on the controls (all components unless `n_components`), then centerscale per batch."""
    _check_controls(controls, np.ones(len(x), bool), None, "pca_cs")
    _warn_if_underdetermined(x.shape[1] if n_components is None else n_components, controls, "pca_cs")
    z = _fit_pca(x[controls], n_components).transform(x)
    return centerscale_on_controls(z, controls, batches, step="pca_cs")


def _sym_power(c: np.ndarray, power: float) -> np.ndarray:
    """C^power for a symmetric positive definite C (what scipy's fractional_matrix_power gives, computed by eigh)."""
    w, v = np.linalg.eigh(c)
    return (v * w ** power) @ v.T


def coral_align(x: np.ndarray, controls: np.ndarray, batches: np.ndarray, reg: float = CORAL_REG) -> np.ndarray:
    """Each batch times (C_b + reg I)^(-1/2) (C_pooled + reg I)^(1/2), C = the controls' covariance (ddof 1):
    afterwards a batch's controls have the pooled controls' covariance (exactly when reg = 0)."""
    out = np.array(x, dtype=np.float64, copy=True)
    eye = np.eye(x.shape[1])
    _check_controls(controls, np.ones(len(x), bool), None, "coral")
    target = _sym_power(np.cov(x[controls], rowvar=False, ddof=1).reshape(eye.shape) + reg * eye, 0.5)
    for batch, members in _batches(len(x), batches):
        _check_controls(controls, members, batch, "coral")
        cov = np.cov(x[members & controls], rowvar=False, ddof=1).reshape(eye.shape) + reg * eye
        try:
            out[members] = x[members] @ _sym_power(cov, -0.5) @ target
        except np.linalg.LinAlgError as e:
            raise MissingControlsError(f"coral: batch {batch!r}: the controls' covariance cannot be inverted ({e}); "
                                       f"use reg > 0") from e
    return out


def tvn_on_controls(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None,
                    coral_batches: np.ndarray | None = None, coral_reg: float = CORAL_REG) -> np.ndarray:
    """Typical variation normalisation: centerscale on the controls (per batch when `batches`), PCA fitted on the
    controls, centerscale on the pooled controls (the controls are now white: covariance = identity), then CORAL
    per `coral_batches` when given."""
    z = centerscale_on_controls(x, controls, batches, step="tvn")
    _warn_if_underdetermined(x.shape[1], controls, "tvn")
    z = _fit_pca(z[controls], None).transform(z)
    z = centerscale_on_controls(z, controls, None, step="tvn")
    if coral_batches is not None:
        z = coral_align(z, controls, coral_batches, reg=coral_reg)
    return z


def correct(wells: WellProfiles, method: str, *, control: str = "EMPTY_control", control_col: str = "treatment",
            batch: Sequence[str] | None = ("experiment_name",), coral_batch: Sequence[str] | None = None,
            n_components: int | None = None, embed_dims: int | str | None = None) -> WellProfiles:
    """Apply one of CORRECTIONS to well profiles. `batch`: the metadata columns that make a batch for centring and
    scaling (None: pooled); `coral_batch`: the columns of CORAL's batches (TVN only; None: no CORAL);
    `embed_dims`: first reduce to this many dimensions with embed_by_pca over all wells (when there are more);
    "auto": one dimension per CONTROLS_PER_DIM control wells (auto_embed_dims)."""
    if method not in CORRECTIONS:
        raise MapInputError(f"correction {method!r}; expected one of {CORRECTIONS}")
    if embed_dims == "auto":
        embed_dims = auto_embed_dims(int(control_mask(wells.metadata, control_col, control).sum()))
    elif embed_dims is not None and (not isinstance(embed_dims, int) or embed_dims < 1):
        raise MapInputError(f"embed_dims {embed_dims!r}: expected a positive integer, 'auto' or None")
    if embed_dims is not None and wells.n_features > embed_dims:
        log.info("embed_by_pca: %d features -> %d", wells.n_features, embed_dims)
        wells = wells.with_features(embed_by_pca(wells.features, embed_dims))
    if method == "none":
        return wells
    controls = control_mask(wells.metadata, control_col, control)
    batches = batch_keys(wells.metadata, batch) if batch else None
    if method == "centerscale":
        x = centerscale_on_controls(wells.features, controls, batches)
    elif method == "pca_cs":
        x = pca_centerscale_on_controls(wells.features, controls, batches, n_components=n_components)
    else:
        coral = batch_keys(wells.metadata, coral_batch) if coral_batch else None
        x = tvn_on_controls(wells.features, controls, batches, coral_batches=coral)
    log.info("correction %s: %d wells, %d -> %d features, %d controls", method, len(wells), wells.n_features,
             x.shape[1], int(controls.sum()))
    return wells.with_features(x)
