"""Plate assignment on simulated logits over a site table with the real RxRx1 plate structure (40 classes)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cellio
from cellio.errors import ConfigError
from cellio.schema import NEGATIVE_CONTROL_SIRNA
from plate_sim import (CLASSES, GROUPS, POSITIVE, accuracy, hide_treatment_labels, make_sites, noisy_scores,
                       view_predictions)
from trainer.infer.aggregate import WellScores
from trainer.infer.assign import assign_plates, infer_rotations, predict_labels

TRAIN = {"HUVEC-01": ("train", 0), "HUVEC-02": ("train", 1), "RPE-01": ("train", 2)}


@pytest.fixture(scope="module")
def groups():
    pg = cellio.derive_plate_groups(make_sites(TRAIN))
    assert sorted(map(sorted, pg.groups)) == GROUPS
    return pg


def test_recovers_unseen_rotation_and_uses_each_class_once(groups):
    truth_sites = make_sites({"HEPG2-08": ("test", 3), "U2OS-04": ("test", 1)}, seed=1)
    scores, truth = noisy_scores(truth_sites, signal=2.0, noise=1.0, seed=2)
    sites = hide_treatment_labels(truth_sites)
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
    sites = hide_treatment_labels(truth_sites)
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
    sites = hide_treatment_labels(truth_sites)
    for pred in (predict_labels(scores, sites, groups), assign_plates(scores, sites, groups).predictions):
        pred = pred.set_index("id_code")["sirna"]
        ctrl_ids = meta.index[is_ctrl]
        assert (pred.loc[ctrl_ids] == truth.loc[ctrl_ids]).all()
        assert not pred.loc[meta.index[~is_ctrl]].isin([*POSITIVE, NEGATIVE_CONTROL_SIRNA]).any()


def test_given_rotation_overrides_inference(groups):
    truth_sites = make_sites({"U2OS-05": ("test", 1)}, seed=7)
    scores, _ = noisy_scores(truth_sites, signal=2.0, noise=1.0, seed=8)
    sites = hide_treatment_labels(truth_sites)
    result = assign_plates(scores, sites, groups, rotations={"U2OS-05": 0})
    pred = result.predictions.set_index("id_code")["sirna"]
    plate1 = [i for i in pred.index if i.startswith("U2OS-05_1_")]
    treat = pred.loc[plate1][~pred.loc[plate1].isin([*POSITIVE, NEGATIVE_CONTROL_SIRNA])]
    assert set(treat) <= set(groups.allowed_sirnas(1, 0))


def test_inference_steps_chain_on_two_models(groups):
    from trainer.infer.chain import inference_steps
    from trainer.infer.predict import Predictions

    truth_sites = make_sites({"HEPG2-09": ("test", 2), "RPE-09": ("test", 0)}, seed=9)
    sites = hide_treatment_labels(truth_sites)
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
                                "TTA mean + plate assignment", "ensemble + plate mask", "ensemble + plate assignment",
                                "TTA mean + plate assignment, no rotation", "ensemble + plate assignment, no rotation"]
    truth = truth_sites.drop_duplicates("id_code").set_index("id_code")["sirna"].astype(np.int64)
    treat = truth_sites.loc[truth_sites["well_type"] == "treatment", "id_code"].unique()
    acc = {k: (v.set_index("id_code")["sirna"].loc[treat] == truth.loc[treat]).mean() for k, v in res.labels.items()}
    assert acc["TTA mean logits"] > acc["single view"]
    assert acc["ensemble"] >= acc["TTA mean logits"]
    assert acc["ensemble + plate assignment"] >= acc["ensemble + plate mask"] >= acc["ensemble"]
    ctrl = truth_sites.loc[truth_sites["well_type"] != "treatment", "id_code"].unique()
    final = res.labels[res.final].set_index("id_code")["sirna"]
    assert (final.loc[ctrl] == truth.loc[ctrl]).all()


def test_a_near_chance_model_never_lowers_the_ensemble_below_the_best_single_model(groups):
    from trainer.infer.chain import fit_calibration, inference_steps, members_of

    truth_sites = make_sites({"HEPG2-01": ("train", 0), "RPE-01": ("train", 1), "U2OS-01": ("train", 2)}, seed=11)
    truth = truth_sites.drop_duplicates("id_code").set_index("id_code")["sirna"].astype(np.int64)
    treat = truth_sites.loc[truth_sites["well_type"] == "treatment", "id_code"].unique()
    good = view_predictions(truth_sites, truth_sites, signal=1.2, scale=1.0, seed=12)
    # near chance but loud: equal-weight averaging of raw logits lets it drown the good model
    noise = view_predictions(truth_sites, truth_sites, signal=0.3, scale=12.0, seed=13)
    plain = inference_steps([good, noise], truth_sites, groups=None)
    cal = fit_calibration(members_of([good, noise], truth_sites), truth_sites, truth.loc[treat])
    fitted = inference_steps([good, noise], truth_sites, groups=None, calibration=cal)
    best_single = accuracy(fitted.labels["TTA mean logits"], truth, treat)
    assert accuracy(plain.labels["ensemble"], truth, treat) < best_single - 0.1  # the defect this guards
    assert accuracy(fitted.labels["ensemble"], truth, treat) >= best_single
    assert cal.temperatures[1] > 10 * cal.temperatures[0]  # the loud near-chance model is flattened


def test_an_ambiguous_rotation_never_zeroes_an_experiment(groups):
    truth_sites = make_sites({"HEPG2-08": ("test", 3), "U2OS-04": ("test", 1)}, seed=14)
    sites = hide_treatment_labels(truth_sites)
    scores, truth = noisy_scores(truth_sites, signal=2.5, noise=1.0, seed=15)
    # HEPG2-08's model knows almost nothing: its rotation evidence is flat
    meta = truth_sites.drop_duplicates("id_code").set_index("id_code").loc[scores.id_codes]
    weak = (meta["experiment"] == "HEPG2-08").to_numpy()
    s = scores.scores.copy()
    s[weak] = np.random.default_rng(16).normal(scale=1.0, size=s[weak].shape)
    s[weak, pd.Index(CLASSES).get_indexer(truth.loc[meta.index[weak]].to_numpy())] += 0.4
    scores = WellScores(scores.id_codes, s, CLASSES)
    result = assign_plates(scores, sites, groups)
    assert not result.evidence["HEPG2-08"].trusted(3.0) and result.evidence["U2OS-04"].trusted(3.0)
    assert "HEPG2-08" in result.unmasked and "no plate mask" in result.unmasked["HEPG2-08"]
    assert "HEPG2-08" not in result.rotations and result.rotations["U2OS-04"] == 1
    plain = predict_labels(scores, sites, groups)
    treat = meta.index[(meta["well_type"] == "treatment").to_numpy()]
    weak_treat = [i for i in treat if i.startswith("HEPG2-08")]
    # the weak experiment is assigned without a mask (never a wrong rotation's zero), each class once per plate
    assert accuracy(result.predictions, truth, weak_treat) >= accuracy(plain, truth, weak_treat) > 0
    got = result.predictions.set_index("id_code")["sirna"].loc[weak_treat]
    assert not pd.DataFrame({"plate": [i.rsplit("_", 1)[0] for i in weak_treat], "s": got.to_numpy()}).duplicated().any()
    strong = [i for i in treat if i.startswith("U2OS-04")]
    assert accuracy(result.predictions, truth, strong) >= accuracy(plain, truth, strong)


def test_the_submission_is_the_step_validation_ranks_first(groups, tmp_path):
    from trainer.infer.chain import ChainInputs, run_chain

    # a train/validation experiment and a test experiment of the same data set: out-of-fold views of a model
    # that is good on validation, plus a second model that is near chance
    truth_sites = make_sites({"HEPG2-01": ("train", 0), "RPE-01": ("train", 1), "U2OS-01": ("train", 2),
                              "HEPG2-08": ("test", 3)}, seed=18)
    test_truth = truth_sites[(truth_sites["dataset"] == "test") & (truth_sites["well_type"] == "treatment")]
    (test_truth.drop_duplicates("id_code")[["id_code", "sirna"]]).to_csv(tmp_path / "truth.csv", index=False)
    sites = truth_sites.copy()
    sites.loc[(sites["dataset"] == "test") & (sites["well_type"] == "treatment"), "sirna"] = pd.NA
    models = [view_predictions(sites, truth_sites, signal=1.5, scale=1.0, seed=19),
              view_predictions(sites, truth_sites, signal=0.2, scale=8.0, seed=20)]
    is_val = (sites["dataset"] == "train").to_numpy()[models[0].index]
    val = [m.rows(is_val) for m in models]
    test = [m.rows(~is_val) for m in models]
    res = run_chain(ChainInputs(sites, val, test, test_truth=tmp_path / "truth.csv"), tmp_path / "out")
    ranking = res.extra["submission"]["ranking"]
    steps = res.reports["validation"]["steps"]
    best = max(v["expected_test"] for v in steps.values())
    assert res.submitted == ranking[0][0] and ranking[0][1] >= best - 1 / res.reports["validation"]["n_wells"] - 1e-9
    for name, v in steps.items():
        if "if_rotation_right" in v:  # a wrong rotation masks out every true class
            assert v["if_rotation_wrong"] == 0.0 and v["if_rotation_right"] >= v["expected_test"]
        else:  # a step that needs no rotation is expected to score what it scored
            assert v["expected_test"] == v["accuracy"]
    assert "plate assignment" in res.submitted  # on this data assignment is what validation ranks first
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["submission"]["step"] == res.submitted and "expected test accuracy" in rep["submission"]["why"]
    assert (pd.read_csv(tmp_path / "out" / "test_predictions.csv")["sirna"].to_numpy()
            == res.test.labels[res.submitted]["sirna"].to_numpy()).all()


def test_sinkhorn_balance_spreads_a_class_that_a_biased_model_gives_every_well(groups):
    # a model biased towards one class per plate: plain masked argmax piles wells onto it; balancing each plate's
    # block gives every class about one well, so the masked argmax recovers most wells; the assignment stays a
    # one-class-per-plate permutation either way
    truth_sites = make_sites({"HUVEC-17": ("test", 0)}, seed=5)
    scores, truth = noisy_scores(truth_sites, signal=2.0, noise=0.5, seed=6)
    sites = hide_treatment_labels(truth_sites)
    biased = scores.scores.copy()
    for plate in range(1, 5):
        favourite = groups.allowed_sirnas(plate, 0)[0]
        rows = [i for i, c in enumerate(scores.id_codes) if c.startswith(f"HUVEC-17_{plate}_")]
        biased[rows, list(CLASSES).index(favourite)] += 3.0
    ws = WellScores(scores.id_codes, biased, scores.classes)
    plain = assign_plates(ws, sites, groups, rotations={"HUVEC-17": 0})
    balanced = assign_plates(ws, sites, groups, rotations={"HUVEC-17": 0}, balance="sinkhorn")
    treat = sites.loc[sites["well_type"] == "treatment", "id_code"].unique()

    def acc(labels: pd.DataFrame) -> float:
        return float((labels.set_index("id_code")["sirna"].loc[treat] == truth.loc[treat]).mean())

    assert acc(plain.masked) < 0.5 < acc(balanced.masked)
    assert acc(balanced.predictions) >= acc(plain.predictions) - 0.05
    with pytest.raises(ConfigError, match="balance"):
        assign_plates(ws, sites, groups, balance="softmax")
