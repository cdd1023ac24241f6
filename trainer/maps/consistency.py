"""Perturbation signal consistency, EFAAR's replicate benchmark
(`efaar_benchmarking.benchmarking.pert_signal_consistency_benchmark`, called as is).

For each perturbation, the mean cosine similarity between its wells (every pair, lower triangle). The null
distribution is the same statistic for the negative-control perturbations (EFAAR: "typically unexpressed genes";
the synthetic set has olfactory-receptor genes with no phenotype, tests/formats/rxrx3_maps.py). A perturbation's
p-value is 1 - (rank of its mean cosine among the sorted null) / (null size); it is consistent at p < `alpha`
(0.01). A perturbation with one well has no pair: NaN, reported, not counted as consistent.

With N null perturbations the smallest non-zero p-value is 1/N, so p < 0.01 means "above every null value" when
N < 100 — the table says how many null perturbations there were.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainer.maps.annotations import efaar_benchmarking
from trainer.maps.errors import MapInputError
from trainer.maps.profiles import WellProfiles

__all__ = ["ALPHA", "Consistency", "signal_consistency"]

log = logging.getLogger(__name__)

ALPHA = 0.01


@dataclass(frozen=True)
class Consistency:
    per_perturbation: pd.DataFrame   # pert, avgcossim, pval (the package's columns)
    n_null: int                      # null perturbations found in the wells
    alpha: float

    @property
    def fraction_consistent(self) -> float:
        """Consistent perturbations (p < alpha) over all query perturbations (NaN ones count as not consistent)."""
        p = self.per_perturbation["pval"].to_numpy(dtype=float)
        return float(np.mean(np.nan_to_num(p, nan=1.0) < self.alpha)) if len(p) else float("nan")

    @property
    def n_untestable(self) -> int:
        return int(self.per_perturbation["pval"].isna().sum())


def signal_consistency(wells: WellProfiles, pert_col: str, null_perturbations: Sequence[str],
                       drop: Sequence[str] = (), alpha: float = ALPHA) -> Consistency:
    """Run EFAAR's consistency benchmark on well profiles: queries are every `pert_col` value except the null
    perturbations and `drop` (e.g. the negative-control label, which is neither a query nor a null here)."""
    wells.require([pert_col], "signal consistency")
    present = sorted(set(null_perturbations) & set(wells.metadata[pert_col].astype(str)))
    if not present:
        raise MapInputError(f"signal consistency: none of the {len(null_perturbations)} null perturbations is in "
                            f"column {pert_col!r}; the null needs negative-control perturbations (e.g. unexpressed "
                            f"genes) that were screened")
    meta = wells.metadata.assign(**{pert_col: wells.metadata[pert_col].astype(str)})
    bench = efaar_benchmarking()
    # the package calls joblib with verbose=5 (progress lines on stderr); keep them out of our logs
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        table = bench.pert_signal_consistency_benchmark(wells.features, meta, pert_col, neg_ctrl_perts=present,
                                                        keys_to_drop=list(drop), n_jobs=1)
    table = table.sort_values("pert", kind="stable").reset_index(drop=True)
    result = Consistency(table, len(present), alpha)
    log.info("signal consistency: %d perturbations, %d null, %.3f consistent at p < %g", len(table), len(present),
             result.fraction_consistent, alpha)
    return result
