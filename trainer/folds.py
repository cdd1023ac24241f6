"""Validation folds made of whole train experiments, stratified by cell type.

Holding out whole experiments is what the test set does (its experiments are all new), so the validation
accuracy measures the batch-effect generalisation that matters; site- or well-level splits overstate it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cellio.errors import ConfigError, MetadataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["make_folds", "fold_experiments"]


def make_folds(sites: "pd.DataFrame", n_folds: int, seed: int = 0) -> dict[str, int]:
    """Train experiment -> fold in 0..n_folds-1.

    Within each cell type the experiments are shuffled (seeded) and dealt round-robin; the dealing continues
    across cell types so fold sizes differ by at most one and every fold gets a share of each cell type that
    has enough experiments.
    """
    missing = {"dataset", "experiment", "cell_type"} - set(sites.columns)
    if missing:
        raise MetadataError(f"make_folds: site table lacks columns {sorted(missing)}")
    train = sites[sites["dataset"] == "train"]
    n_exp = train["experiment"].nunique()
    if n_folds < 2 or n_folds > n_exp:
        raise ConfigError(f"config key 'data.n_folds': expected 2..{n_exp} (the number of train experiments), "
                          f"found {n_folds}")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    deal = 0
    for cell_type in sorted(train["cell_type"].unique()):
        exps = sorted(train.loc[train["cell_type"] == cell_type, "experiment"].unique())
        for i in rng.permutation(len(exps)):
            folds[exps[i]] = deal % n_folds
            deal += 1
    return dict(sorted(folds.items()))


def fold_experiments(folds: dict[str, int], fold: int) -> tuple[list[str], list[str]]:
    """(train experiments, held-out experiments) for `fold`; fold -1 holds nothing out."""
    held = sorted(e for e, f in folds.items() if f == fold)
    return sorted(e for e in folds if e not in set(held)), held
