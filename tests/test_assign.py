"""Plate assignment on simulated logits over a site table with the real RxRx1 plate structure (40 classes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cellio
from cellio.schema import ALL_WELLS, NEGATIVE_CONTROL_SIRNA
from trainer.aggregate import WellScores
from trainer.assign import assign_plates, infer_rotations, predict_labels

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


TRAIN = {"HUVEC-01": ("train", 0), "HUVEC-02": ("train", 1), "RPE-01": ("train", 2)}


@pytest.fixture(scope="module")
def groups():
    pg = cellio.derive_plate_groups(make_sites(TRAIN))
    assert sorted(map(sorted, pg.groups)) == GROUPS
    return pg


def noisy_scores(sites: pd.DataFrame, *, signal: float, noise: float, seed: int) -> tuple[WellScores, pd.Series]:
    """Per-well logits: the true class gets +signal; controls also score high on treatments (a hard model)."""
    rng = np.random.default_rng(seed)
    wells = sites.drop_duplicates("id_code").sort_values("id_code")
    truth = pd.Series(wells["sirna"].to_numpy(dtype=np.int64), index=wells["id_code"].to_numpy())
    s = rng.normal(scale=noise, size=(len(wells), len(CLASSES))).astype(np.float32)
    col = pd.Index(CLASSES).get_indexer(truth.to_numpy())
    s[np.arange(len(wells)), col] += signal
    return WellScores(wells["id_code"].to_numpy(dtype=object), s, CLASSES), truth


def _hide_treatment_labels(sites: pd.DataFrame) -> pd.DataFrame:
    out = sites.copy()
    out.loc[out["well_type"] == "treatment", "sirna"] = pd.NA
    return out


def test_recovers_unseen_rotation_and_uses_each_class_once(groups):
    truth_sites = make_sites({"HEPG2-08": ("test", 3), "U2OS-04": ("test", 1)}, seed=1)
    scores, truth = noisy_scores(truth_sites, signal=2.0, noise=1.0, seed=2)
    sites = _hide_treatment_labels(truth_sites)
    rot, per_r = infer_rotations(scores, sites, groups)
    assert rot == {"HEPG2-08": 3, "U2OS-04": 1}
    assert all(len(v) == 4 for v in per_r.values())

    result = assign_plates(scores, sites, groups)
    assert result.rotations == rot and all(m > 0 for m in result.margins.values())
    summary = result.summary(known={"HEPG2-08": 3, "U2OS-04": 0})
    assert summary["rotation_correct"] == {"HEPG2-08": True, "U2OS-04": False}
    assert all(v > 0 for v in summary["relative_margins"].values())
    pred = result.predictions.set_index("id_code")["sirna"]
    meta = sites.drop_duplicates("id_code").set_index("id_code")
    treat = meta[meta["well_type"] == "treatment"]
    for (exp, plate), wells in treat.groupby(["experiment", "plate"]):
        got = pred.loc[wells.index]
        assert got.is_unique, f"{exp} plate {plate} reuses a class"
        assert set(got) <= set(groups.allowed_sirnas(plate, rot[exp]))
    # Accuracy on treatments: assignment must not be lower than the plain argmax.
    base = predict_labels(scores, sites, groups).set_index("id_code")["sirna"]
    acc_base = (base.loc[treat.index] == truth.loc[treat.index]).mean()
    acc_assign = (pred.loc[treat.index] == truth.loc[treat.index]).mean()
    assert acc_assign >= acc_base + 0.1, (acc_base, acc_assign)


def test_rectangular_plates_with_missing_wells(groups):
    truth_sites = make_sites({"RPE-08": ("test", 2)}, drop={("RPE-08", 1): 3, ("RPE-08", 4): 1}, seed=3)
    scores, truth = noisy_scores(truth_sites, signal=3.0, noise=1.0, seed=4)
    sites = _hide_treatment_labels(truth_sites)
    result = assign_plates(scores, sites, groups)
    pred = result.predictions.set_index("id_code")["sirna"]
    assert len(pred) == sites["id_code"].nunique() and pred.index.is_unique
    for plate, n_wells in ((1, 7), (4, 9), (2, 10)):
        ids = [i for i in pred.index if i.startswith(f"RPE-08_{plate}_")]
        t = pred.loc[ids]
        treat = t[~t.isin([*POSITIVE, NEGATIVE_CONTROL_SIRNA])]
        assert len(treat) == n_wells and treat.is_unique
    treat_ids = truth_sites.loc[truth_sites["well_type"] == "treatment", "id_code"].unique()
    assert (pred.loc[treat_ids] == truth.loc[treat_ids]).mean() > 0.95


def test_controls_keep_their_labels_and_treatments_never_take_controls(groups):
    truth_sites = make_sites({"HUVEC-17": ("test", 0)}, seed=5)
    scores, truth = noisy_scores(truth_sites, signal=2.0, noise=0.5, seed=6)
    # Make the model badly wrong: controls look like treatment 3, treatments look most like a control class.
    meta = truth_sites.drop_duplicates("id_code").set_index("id_code").loc[scores.id_codes]
    is_ctrl = meta["well_type"].ne("treatment").to_numpy()
    s = scores.scores.copy()
    s[is_ctrl, 3] += 50.0
    s[~is_ctrl, list(CLASSES).index(1108)] += 50.0
    scores = WellScores(scores.id_codes, s, CLASSES)
    sites = _hide_treatment_labels(truth_sites)
    for pred in (predict_labels(scores, sites, groups), assign_plates(scores, sites, groups).predictions):
        pred = pred.set_index("id_code")["sirna"]
        ctrl_ids = meta.index[is_ctrl]
        assert (pred.loc[ctrl_ids] == truth.loc[ctrl_ids]).all()
        assert not pred.loc[meta.index[~is_ctrl]].isin([*POSITIVE, NEGATIVE_CONTROL_SIRNA]).any()


def test_given_rotation_overrides_inference(groups):
    truth_sites = make_sites({"U2OS-05": ("test", 1)}, seed=7)
    scores, _ = noisy_scores(truth_sites, signal=2.0, noise=1.0, seed=8)
    sites = _hide_treatment_labels(truth_sites)
    result = assign_plates(scores, sites, groups, rotations={"U2OS-05": 0})
    pred = result.predictions.set_index("id_code")["sirna"]
    plate1 = [i for i in pred.index if i.startswith("U2OS-05_1_")]
    treat = pred.loc[plate1][~pred.loc[plate1].isin([*POSITIVE, NEGATIVE_CONTROL_SIRNA])]
    assert set(treat) <= set(groups.allowed_sirnas(1, 0))


def test_inference_steps_chain_on_two_models(groups):
    from trainer.chain import inference_steps
    from trainer.predict import Predictions

    truth_sites = make_sites({"HEPG2-09": ("test", 2), "RPE-09": ("test", 0)}, seed=9)
    sites = _hide_treatment_labels(truth_sites)
    rng = np.random.default_rng(10)
    index = np.repeat(np.arange(len(sites)), 4)
    view = np.tile(np.arange(4), len(sites))
    col = pd.Index(CLASSES).get_indexer(truth_sites["sirna"].to_numpy(dtype=np.int64)[index])
    models = []
    for perm in (np.arange(len(CLASSES)), rng.permutation(len(CLASSES))):  # second model: another column order
        logits = rng.normal(size=(len(index), len(CLASSES))).astype(np.float32)
        logits[np.arange(len(index)), col] += 1.0
        models.append(Predictions(logits[:, perm], index, view, CLASSES[perm]))
    res = inference_steps(models, sites, groups=groups)
    assert list(res.labels) == ["single view", "TTA mean logits", "TTA mean probs", "TTA geometric mean",
                                "TTA majority vote", "ensemble", "TTA mean + plate mask",
                                "TTA mean + plate assignment", "ensemble + plate mask", "ensemble + plate assignment"]
    truth = truth_sites.drop_duplicates("id_code").set_index("id_code")["sirna"].astype(np.int64)
    treat = truth_sites.loc[truth_sites["well_type"] == "treatment", "id_code"].unique()
    acc = {k: (v.set_index("id_code")["sirna"].loc[treat] == truth.loc[treat]).mean() for k, v in res.labels.items()}
    assert acc["TTA mean logits"] > acc["single view"]
    assert acc["ensemble"] >= acc["TTA mean logits"]
    assert acc["ensemble + plate assignment"] >= acc["ensemble + plate mask"] >= acc["ensemble"]
    ctrl = truth_sites.loc[truth_sites["well_type"] != "treatment", "id_code"].unique()
    final = res.labels[res.final].set_index("id_code")["sirna"]
    assert (final.loc[ctrl] == truth.loc[ctrl]).all()
