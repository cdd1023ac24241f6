"""Validation folds made of whole labelled experiments, stratified by cell type.

Holding out whole experiments is what the test set does (its experiments are all new), so the validation
accuracy measures the batch-effect generalisation that matters; site- or well-level splits overstate it. The
labelled experiments are those of the layout's labelled splits (RxRx1: train; a layout without hidden test labels:
every split), its cell types the layout's (trainer/training/layout.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cellio.errors import ConfigError, MetadataError

from .layout import labelled_splits, layout_of

if TYPE_CHECKING:
    import pandas as pd

    from .config import DataConfig

__all__ = ["make_folds", "fold_experiments", "FoldSplit", "split_experiments"]


def make_folds(sites: "pd.DataFrame", n_folds: int, seed: int = 0) -> dict[str, int]:
    """Labelled experiment -> fold in 0..n_folds-1.

    Within each cell type the experiments are shuffled (seeded) and dealt round-robin; the dealing continues
    across cell types so fold sizes differ by at most one and every fold gets a share of each cell type that
    has enough experiments.
    """
    missing = {"dataset", "experiment", "cell_type"} - set(sites.columns)
    if missing:
        raise MetadataError(f"make_folds: site table lacks columns {sorted(missing)}")
    train = sites[sites["dataset"].isin(labelled_splits(layout_of(sites)))]
    n_exp = train["experiment"].nunique()
    if n_folds < 1 or n_folds > max(n_exp, 1):
        raise ConfigError(f"config key 'data.n_folds': expected 1..{max(n_exp, 1)} (the number of labelled "
                          f"experiments; 1 holds none out, with data.val_fold=-1), found {n_folds}")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    deal = 0
    # an experiment's cell type: its first site's (an experiment of several cell types is dealt once)
    exp_type = train.drop_duplicates("experiment").set_index("experiment")["cell_type"]
    for cell_type in sorted(exp_type.unique()):
        exps = sorted(exp_type.index[exp_type == cell_type])
        for i in rng.permutation(len(exps)):
            folds[exps[i]] = deal % n_folds
            deal += 1
    return dict(sorted(folds.items()))


def fold_experiments(folds: dict[str, int], fold: int) -> tuple[list[str], list[str]]:
    """(train experiments, held-out experiments) for `fold`; fold -1 holds nothing out."""
    held = sorted(e for e, f in folds.items() if f == fold)
    return sorted(e for e in folds if e not in set(held)), held


@dataclass(frozen=True)
class FoldSplit:
    """The experiments a run trains on and holds out, and the fold of every train experiment."""

    train: list[str]
    val: list[str]
    folds: dict[str, int]

    def to_dict(self, val_fold: int) -> dict:
        return {"folds": self.folds, "val_fold": val_fold, "train": self.train, "val": self.val}


def split_experiments(data: "DataConfig", sites: "pd.DataFrame") -> FoldSplit:
    """The one fold selection of a config's `data` section: trainer.training.loop trains on `train` and validates on
    `val`, and trainer.infer.predict's out-of-fold predictions use the same `val` (they must agree exactly).
    A per-cell-type config (data.cell_types) keeps only its cell types' experiments."""
    folds = make_folds(sites, data.n_folds, data.fold_seed)
    if data.cell_types:
        known = layout_of(sites).cell_types
        unknown = sorted(set(data.cell_types) - set(known))
        if unknown:
            raise ConfigError(f"config key 'data.cell_types': unknown {unknown}; expected a subset of {known}")
        keep = set(sites.loc[sites["cell_type"].isin(data.cell_types), "experiment"])
        folds = {e: f for e, f in folds.items() if e in keep}
    train, val = fold_experiments(folds, data.val_fold)
    if not train:
        raise ConfigError(f"config key 'data.val_fold': fold {data.val_fold} leaves no train experiment")
    return FoldSplit(train, val, folds)
