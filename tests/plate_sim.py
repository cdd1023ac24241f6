"""Simulated plate data for the assignment and rotation tests: a site table with the real RxRx1 plate structure
(40 classes in 4 groups of 10, 2 positive controls and the negative control on every plate) and model scores
over it, per well or per view."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cellio.schema import ALL_WELLS, NEGATIVE_CONTROL_SIRNA
from trainer.infer.aggregate import WellScores

N_CLASSES = 40
GROUPS = [list(range(g * 10, g * 10 + 10)) for g in range(4)]
POSITIVE = [1108, 1109]
CLASSES = np.array([*range(N_CLASSES), *POSITIVE, NEGATIVE_CONTROL_SIRNA])


def make_sites(experiments: dict[str, tuple[str, int]], *, drop: dict[tuple[str, int], int] | None = None,
               seed: int = 0) -> pd.DataFrame:
    """Site table: per plate, B02 negative control, 2 positive controls, then the 10 siRNAs of its group."""
    rng = np.random.default_rng(seed)
    rows = []
    for exp, (dataset, rot) in experiments.items():
        for plate in (1, 2, 3, 4):
            group = GROUPS[(plate - 1 + rot) % 4]
            treat = list(rng.permutation(group))[: len(group) - (drop or {}).get((exp, plate), 0)]
            labels = [(NEGATIVE_CONTROL_SIRNA, "negative_control")] + [(s, "positive_control") for s in POSITIVE]
            labels += [(int(s), "treatment") for s in treat]
            for well, (sirna, wtype) in zip(ALL_WELLS, labels):
                for site in (1, 2):
                    rows.append({"id_code": f"{exp}_{plate}_{well}", "dataset": dataset, "experiment": exp,
                                 "cell_type": exp.split("-")[0], "plate": plate, "well": well, "site": site,
                                 "well_type": wtype, "sirna": sirna})
    frame = pd.DataFrame(rows).sort_values(["dataset", "experiment", "plate", "well", "site"], key=None)
    frame["sirna"] = frame["sirna"].astype("Int64")
    return frame.reset_index(drop=True)


def noisy_scores(sites: pd.DataFrame, *, signal: float, noise: float, seed: int) -> tuple[WellScores, pd.Series]:
    """Per-well logits: the true class gets +signal; controls also score high on treatments (a hard model)."""
    rng = np.random.default_rng(seed)
    wells = sites.drop_duplicates("id_code").sort_values("id_code")
    truth = pd.Series(wells["sirna"].to_numpy(dtype=np.int64), index=wells["id_code"].to_numpy())
    s = rng.normal(scale=noise, size=(len(wells), len(CLASSES))).astype(np.float32)
    col = pd.Index(CLASSES).get_indexer(truth.to_numpy())
    s[np.arange(len(wells)), col] += signal
    return WellScores(wells["id_code"].to_numpy(dtype=object), s, CLASSES), truth


def hide_treatment_labels(sites: pd.DataFrame) -> pd.DataFrame:
    out = sites.copy()
    out.loc[out["well_type"] == "treatment", "sirna"] = pd.NA
    return out


def view_predictions(sites: pd.DataFrame, truth_sites: pd.DataFrame, *, signal: float, scale: float, seed: int,
                     views: int = 4):
    """Per-view logits of a model whose true class gets +signal, noise of std `scale`."""
    from trainer.infer.predict import Predictions

    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(len(sites)), views)
    col = pd.Index(CLASSES).get_indexer(truth_sites["sirna"].to_numpy(dtype=np.int64)[index])
    logits = rng.normal(scale=scale, size=(len(index), len(CLASSES))).astype(np.float32)
    logits[np.arange(len(index)), col] += signal
    return Predictions(logits, index, np.tile(np.arange(views), len(sites)), CLASSES)


def accuracy(labels: pd.DataFrame, truth: pd.Series, ids) -> float:
    return float((labels.set_index("id_code")["sirna"].loc[ids] == truth.loc[ids]).mean())
