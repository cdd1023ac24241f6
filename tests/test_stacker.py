"""LightGBM stacker over TTA views on simulated per-view logits where one view is systematically noisy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellio.errors import ConfigError, MetadataError
from trainer.infer.aggregate import mean_logits
from trainer.infer.stacker import FEATURES, build_features, cross_fit, fit_stacker

N_CLASSES, N_VIEWS = 30, 9


def simulate(n_experiments: int, wells_per_experiment: int, *, seed: int, dataset: str = "train"):
    """Per-view logits: views 0..7 carry a weak signal; view 8 is loud noise that dominates the mean logits."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_experiments):
        exp = f"{['HEPG2', 'HUVEC', 'RPE', 'U2OS'][e % 4]}-{e + 1:02d}"
        for w in range(wells_per_experiment):
            sirna = int(rng.integers(0, N_CLASSES))
            for site in (1, 2):
                rows.append({"id_code": f"{exp}_1_W{w:03d}", "dataset": dataset, "experiment": exp,
                             "cell_type": exp.split("-")[0], "plate": 1, "well": f"W{w:03d}", "site": site,
                             "well_type": "treatment", "sirna": sirna})
    sites = pd.DataFrame(rows)
    sites["sirna"] = sites["sirna"].astype("Int64")
    index = np.repeat(np.arange(len(sites)), N_VIEWS)
    view = np.tile(np.arange(N_VIEWS), len(sites))
    logits = rng.normal(size=(len(index), N_CLASSES)).astype(np.float32)
    truth_col = sites["sirna"].to_numpy(dtype=np.int64)[index]
    clean = view < N_VIEWS - 1
    logits[np.flatnonzero(clean), truth_col[clean]] += 1.2
    logits[~clean] *= 6.0
    truth = sites.drop_duplicates("id_code").set_index("id_code")["sirna"].astype(np.int64)
    return logits, index, sites, truth


def test_cross_fitted_stacker_beats_mean_when_one_view_is_noisy():
    logits, index, sites, truth = simulate(6, 60, seed=0)
    classes = np.arange(N_CLASSES)
    feats = build_features(logits, index, sites, classes=classes, top_k=8)
    assert feats.X.shape == (360, 8, len(FEATURES)) and feats.candidates.shape == (360, 8)
    mean = mean_logits(logits, index, sites, classes=classes)
    acc_mean = (mean.labels() == truth.loc[mean.id_codes].to_numpy()).mean()
    oof = cross_fit(feats, truth, n_splits=3, num_boost_round=60, params={"num_threads": 1})
    acc_stack = (oof.labels() == truth.loc[oof.id_codes].to_numpy()).mean()
    assert acc_stack >= acc_mean + 0.05, (acc_mean, acc_stack)
    np.testing.assert_allclose(oof.scores.sum(axis=1), 1.0, rtol=1e-4)


def test_stacker_transfers_to_new_experiments_and_is_deterministic():
    logits, index, sites, truth = simulate(4, 50, seed=1)
    t_logits, t_index, t_sites, t_truth = simulate(2, 50, seed=2, dataset="test")
    classes = np.arange(N_CLASSES)
    feats = build_features(logits, index, sites, classes=classes, top_k=6)
    test_feats = build_features(t_logits, t_index, t_sites, classes=classes, top_k=6)
    a = fit_stacker(feats, truth, seed=3, num_boost_round=40, params={"num_threads": 1}).predict(test_feats)
    b = fit_stacker(feats, truth, seed=3, num_boost_round=40, params={"num_threads": 1}).predict(test_feats)
    np.testing.assert_array_equal(a.scores, b.scores)
    mean = mean_logits(t_logits, t_index, t_sites, classes=classes)
    t = t_truth.loc[a.id_codes].to_numpy()
    assert (a.labels() == t).mean() >= (mean.labels() == t).mean()
    # The predicted class is always one of the well's candidates.
    assert all(lbl in cand for lbl, cand in zip(a.labels(), test_feats.candidates))


def test_stacker_errors_name_the_problem():
    logits, index, sites, truth = simulate(2, 10, seed=4)
    feats = build_features(logits, index, sites, classes=np.arange(N_CLASSES), top_k=3)
    with pytest.raises(MetadataError, match="truth"):
        fit_stacker(feats, pd.Series({"nope_1_A01": 1}))
    with pytest.raises(MetadataError, match="top-3"):
        fit_stacker(feats, truth + 1000)
    with pytest.raises(ConfigError, match="top_k"):
        build_features(logits, index, sites, classes=np.arange(N_CLASSES), top_k=0)


def test_candidates_can_exclude_control_classes():
    logits, index, sites, truth = simulate(2, 20, seed=5)
    classes = np.arange(N_CLASSES)
    controls = [28, 29]  # pretend the last two outputs are control classes, and make them the loudest
    logits[:, controls] += 5.0
    feats = build_features(logits, index, sites, classes=classes, top_k=5,
                           candidates=[c for c in classes if c not in controls])
    assert not np.isin(feats.candidates, controls).any()
    model = fit_stacker(feats, truth, num_boost_round=10, params={"num_threads": 1})
    assert model.candidates is not None and not set(controls) & set(model.candidates)
    assert not np.isin(model.predict(feats).labels(), controls).any()
    with pytest.raises(ConfigError, match="candidates"):
        build_features(logits, index, sites, classes=classes, candidates=[999])
