"""Rotation decisions that a plate-style shortcut cannot fool (trainer.infer.rotation), the risk each test rotation
carries into the choice of the submitted step (trainer.infer.risk), and issue 20's failure reproduced on a tiny
confounded set: a head that learnt plate style names a wrong rotation with a z the old guard accepts."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import cellio
from plate_sim import CLASSES, GROUPS, accuracy, hide_treatment_labels, make_sites, noisy_scores
from trainer.infer.aggregate import WellScores
from trainer.infer.assign import assign_plates
from trainer.infer.risk import Conditional, expected_accuracies
from trainer.infer.rotation import (RotationEvidence, RotationSource, SourceRecord, centred_scores, decide_rotations,
                              rotation_evidence, score_sources)

VALIDATION = {"HEPG2-01": ("train", 0), "RPE-01": ("train", 1), "U2OS-01": ("train", 2)}
FITTED = {"HEPG2-02": ("train", 1), "RPE-02": ("train", 2), "U2OS-02": ("train", 0)}  # trained on, not held out
TEST = {"HEPG2-08": ("test", 3), "U2OS-04": ("test", 1)}
WRONG = {"HEPG2-08": 1}  # the rotation HEPG2-08's plate style points the shortcut at


@pytest.fixture(scope="module")
def groups():
    return cellio.derive_plate_groups(make_sites(VALIDATION))


def _plate_key(sites: pd.DataFrame, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    meta = sites.drop_duplicates("id_code").set_index("id_code").loc[ids]
    return meta["experiment"].to_numpy(), meta["plate"].to_numpy()


def shortcut(scores: np.ndarray, ids: np.ndarray, sites: pd.DataFrame, toward: dict[str, int], *, bias: float,
             seed: int) -> np.ndarray:
    """Add what a model that learnt plate style does: every well of a plate of an experiment in `toward` leans on
    the classes of the group rotation `toward[exp]` puts on that plate (with some well-to-well spread)."""
    rng = np.random.default_rng(seed)
    out = scores.copy()
    exps, plates = _plate_key(sites, ids)
    col = {int(c): j for j, c in enumerate(CLASSES)}
    for i, (e, p) in enumerate(zip(exps, plates)):
        if e in toward:
            group = GROUPS[(int(p) - 1 + toward[e]) % 4]
            out[i, [col[c] for c in group]] += bias * (1.0 + 0.3 * rng.normal())
    return out


def test_plate_centring_removes_what_a_plate_shares_and_keeps_what_sets_a_well_apart(groups):
    truth_sites = make_sites(TEST, seed=1)
    sites = hide_treatment_labels(truth_sites)
    ws, truth = noisy_scores(truth_sites, signal=2.5, noise=1.0, seed=2)
    fooled = WellScores(ws.id_codes, shortcut(ws.scores, ws.id_codes, sites, WRONG, bias=4.0, seed=3), CLASSES)
    raw = rotation_evidence(fooled, sites, groups)["HEPG2-08"]
    # the failure: a confident wrong rotation that the old z-score guard accepts
    assert raw.rotation == WRONG["HEPG2-08"] and raw.trusted(3.0)
    assert accuracy(assign_plates(fooled, sites, groups).predictions, truth,
                    [i for i in truth.index if i.startswith("HEPG2-08") and truth[i] < 40]) == 0.0
    ev = rotation_evidence(centred_scores(fooled, sites, groups), sites, groups)
    assert ev["HEPG2-08"].rotation == 3 and ev["HEPG2-08"].trusted(3.0)
    assert ev["U2OS-04"].rotation == 1
    # exactly gone: any shift shared by a plate's wells (per class), and any lift of a whole group in one well
    rng = np.random.default_rng(4)
    exps, plates = _plate_key(sites, ws.id_codes)
    plate_id = pd.factorize(pd.Series(exps).str.cat(pd.Series(plates).astype(str)))[0]
    group_of = np.array([next((g for g, m in enumerate(GROUPS) if c in m), -1) for c in CLASSES])
    shared = rng.normal(scale=3.0, size=(plate_id.max() + 1, len(CLASSES)))[plate_id]
    lift = rng.normal(scale=3.0, size=(len(ws.id_codes), 4))[:, group_of] * (group_of >= 0)
    moved = WellScores(ws.id_codes, ws.scores + shared + lift, CLASSES)
    treat = group_of >= 0
    a, b = centred_scores(ws, sites, groups).scores, centred_scores(moved, sites, groups).scores
    assert np.allclose(a[:, treat], b[:, treat], atol=1e-4) and not np.allclose(ws.log_probs(), moved.log_probs())


def _ev(z_best: float, rotation: int, gap: float = 5.0) -> RotationEvidence:
    """Evidence whose best rotation has null-z `z_best` and the others `z_best - gap` or less."""
    z = np.full(4, z_best - gap)
    z[rotation] = z_best
    return RotationEvidence(tuple(float(0.25 + 0.01 * v) for v in z), 0.25, 0.01)


def test_decisions_need_agreeing_voters_and_ignore_a_dissenting_head():
    head = RotationSource("TTA mean", {"A": _ev(7, 1), "B": _ev(9, 2), "C": _ev(1.0, 0), "D": _ev(8, 0)}, False)
    centred = RotationSource("centred", {"A": _ev(6, 3), "B": _ev(8, 2), "C": _ev(1.5, 3), "D": _ev(2.0, 1)}, True)
    centroids = RotationSource("centroids", {"A": _ev(14, 3), "B": _ev(2.0, 1), "C": _ev(2.5, 3), "D": _ev(6, 2)},
                               True)
    d = decide_rotations([head, centred, centroids], min_z=3.0)
    assert d["A"].rotation == 3 and d["A"].status == "agreed" and d["A"].dissent == {"TTA mean": 1}
    assert "shortcut" in d["A"].why
    assert d["B"].rotation == 2 and d["B"].voters == ("centred",) and d["B"].support == ("TTA mean", "centred")
    assert d["C"].rotation is None and d["C"].status == "ambiguous"  # nobody is sure
    assert d["D"].rotation == 2 and d["D"].dissent == {"TTA mean": 0}  # the head's dissent is reported, not obeyed
    d2 = decide_rotations([head, centred, RotationSource("c2", {"D": _ev(5, 1)}, True)], min_z=3.0)
    assert d2["D"].status == "agreed" and d2["D"].rotation == 1
    d3 = decide_rotations([centred, RotationSource("c3", {"A": _ev(5, 0)}, True)], min_z=3.0)
    assert d3["A"].status == "contested" and d3["A"].rotation is None and "disagree" in d3["A"].why
    with pytest.raises(cellio.ConfigError, match="vote"):
        decide_rotations([head], min_z=3.0)


def test_reliability_comes_from_the_supporting_sources_validation_record():
    s1 = RotationSource("s1", {"A": _ev(9, 0), "B": _ev(9, 1), "T": _ev(9, 2)}, True)
    s2 = RotationSource("s2", {"A": _ev(9, 0), "B": _ev(2.0, 3), "T": _ev(9, 2)}, True)  # unsure (and wrong) on B
    rec = score_sources([s1, s2], {"A": 0, "B": 1}, min_z=3.0)
    assert rec["s1"] == SourceRecord(2, 2, 2, 2) and rec["s2"] == SourceRecord(2, 1, 1, 1)
    assert rec["s1"].error_rate == pytest.approx(1 / 4) and rec["s2"].error_rate == pytest.approx(1 / 3)
    assert SourceRecord().error_rate == 0.5
    d = decide_rotations([s1, s2], min_z=3.0, records=rec)["T"]
    # both wrong, and alike (1 of 3 wrong rotations): 1 - 1/4 * 1/3 / 3
    assert d.rotation == 2 and d.reliability == pytest.approx(1 - (1 / 4) * (1 / 3) / 3)
    alone = decide_rotations([s1], min_z=3.0, records=rec)["T"]
    assert alone.reliability == pytest.approx(1 - 1 / 4)


def test_a_source_sure_of_a_wrong_rotation_on_validation_loses_its_vote():
    good = RotationSource("good", {"A": _ev(9, 0), "B": _ev(9, 1), "T": _ev(2.0, 2), "U": _ev(8, 2)}, True)
    fooled = RotationSource("fooled", {"A": _ev(9, 3), "B": _ev(9, 1), "T": _ev(9, 1), "U": _ev(9, 1)}, True)
    rec = score_sources([good, fooled], {"A": 0, "B": 1}, min_z=3.0)
    assert rec["fooled"].trusted == 2 and rec["fooled"].trusted_right == 1
    d = decide_rotations([good, fooled], min_z=3.0, records=rec)
    assert d["T"].rotation is None and d["T"].status == "ambiguous" and "disqualified" in d["T"].why
    assert d["U"].rotation == 2 and d["U"].dissent == {"fooled": 1} and d["U"].support == ("good",)
    # without the validation record it would have been a contest
    assert decide_rotations([good, fooled], min_z=3.0)["U"].status == "contested"


def test_expected_accuracy_discounts_a_rotation_step_by_its_test_risk(groups):
    sites = hide_treatment_labels(make_sites(TEST, seed=4))
    wells = sites["id_code"].unique()
    val = {"plain": 0.6, "X + plate assignment": 0.9, "X + plate assignment, no rotation": 0.7}
    cond = {"X + plate assignment": Conditional(right=0.95, wrong=0.0, none=0.7)}
    from trainer.infer.rotation import RotationDecision

    sure = {"HEPG2-08": RotationDecision(3, "agreed", reliability=1.0),
            "U2OS-04": RotationDecision(1, "agreed", reliability=0.5)}
    e = expected_accuracies(val, cond, sure, sites, wells)
    assert e["plain"] == 0.6 and e["X + plate assignment, no rotation"] == 0.7
    # both experiments have 40 treatment wells: (0.95 + 0.5 * 0.95) / 2
    assert e["X + plate assignment"] == pytest.approx((0.95 + 0.475) / 2)
    contested = {"HEPG2-08": RotationDecision(None, "contested"), "U2OS-04": RotationDecision(None, "ambiguous")}
    assert expected_accuracies(val, cond, contested, sites, wells)["X + plate assignment"] == pytest.approx(0.7)


def _views(sites: pd.DataFrame, truth_sites: pd.DataFrame, toward: dict[str, int], *, signal: float, bias: float,
           seed: int, views: int = 2):
    """Per-view logits of a weak model that learnt plate style (see `shortcut`)."""
    from trainer.infer.predict import Predictions

    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(len(sites)), views)
    col = pd.Index(CLASSES).get_indexer(truth_sites["sirna"].to_numpy(dtype=np.int64)[index])
    logits = rng.normal(size=(len(index), len(CLASSES))).astype(np.float32)
    logits[np.arange(len(index)), col] += signal
    ids = sites["id_code"].to_numpy()[index]
    logits = shortcut(logits, ids, sites, toward, bias=bias, seed=seed + 1).astype(np.float32)
    return Predictions(logits, index, np.tile(np.arange(views), len(sites)), CLASSES)


def _embeddings(truth_sites: pd.DataFrame, *, seed: int, dims: int = 24):
    """Well embeddings: the siRNA's direction, plus a large per-plate offset (plate style), plus noise."""
    from trainer.infer.embed import WellEmbeddings

    rng = np.random.default_rng(seed)
    wells = truth_sites.drop_duplicates("id_code").sort_values("id_code")
    proto = rng.normal(size=(int(CLASSES.max()) + 1, dims))
    offset = {k: rng.normal(scale=3.0, size=dims) for k in wells.groupby(["experiment", "plate"]).groups}
    v = np.stack([proto[int(s)] + offset[(e, p)] for s, e, p in
                  zip(wells["sirna"], wells["experiment"], wells["plate"])]) + rng.normal(scale=0.6, size=(len(wells),
                                                                                                          dims))
    return WellEmbeddings(wells["id_code"].to_numpy(dtype=object), v.astype(np.float32))


def test_a_plate_style_shortcut_no_longer_zeroes_a_test_experiment(groups, tmp_path, caplog):
    """Issue 20 on a tiny confounded set: validation's rotations come out right, the head is fooled on HEPG2-08
    (z well above the old guard), the centred head and the embedding centroids are not."""
    from trainer.infer.chain import ChainInputs, run_chain

    truth_sites = make_sites({**FITTED, **VALIDATION, **TEST}, seed=5)
    test_truth = truth_sites[(truth_sites["dataset"] == "test") & (truth_sites["well_type"] == "treatment")]
    test_truth.drop_duplicates("id_code")[["id_code", "sirna"]].to_csv(tmp_path / "truth.csv", index=False)
    sites = truth_sites.copy()
    sites.loc[(sites["dataset"] == "test") & (sites["well_type"] == "treatment"), "sirna"] = pd.NA
    true_rot = {e: r for e, (_, r) in {**FITTED, **VALIDATION, **TEST}.items()}
    # the style of the validation plates happens to point at their true groups; HEPG2-08's at a wrong rotation
    toward = {**{e: true_rot[e] for e in VALIDATION}, **WRONG}
    preds = _views(sites, truth_sites, toward, signal=1.6, bias=3.0, seed=6)
    is_val = sites["experiment"].isin(list(VALIDATION)).to_numpy()[preds.index]
    is_test = (sites["dataset"] == "test").to_numpy()[preds.index]
    emb = _embeddings(truth_sites, seed=7)
    with caplog.at_level(logging.WARNING, logger="trainer.infer.chain"):
        res = run_chain(ChainInputs(sites, [preds.rows(is_val)], [preds.rows(is_test)], embeddings=[emb],
                                    test_truth=tmp_path / "truth.csv"), tmp_path / "out")
    head = next(s for s in res.test.sources if s.name == "TTA mean").evidence["HEPG2-08"]
    assert head.rotation == WRONG["HEPG2-08"] and head.trusted(3.0)  # the old guard would have masked with it
    d = res.test.rotations["HEPG2-08"]
    assert d.rotation == 3 and d.dissent == {"TTA mean": WRONG["HEPG2-08"]}
    assert "HEPG2-08" in caplog.text and "contested" in caplog.text
    test_rep = res.reports["test"]["steps"]
    assert test_rep[res.submitted]["per_experiment"]["HEPG2-08"] > 0.5
    # what validation promised is what test delivered, within a few wells
    promised = res.reports["validation"]["steps"][res.submitted]["expected_test"]
    assert abs(test_rep[res.submitted]["accuracy"] - promised) <= 6 / res.reports["test"]["n_wells"]
    sources = res.extra["rotation"]["validation"]["sources"]
    assert sources["TTA mean, centred"]["trusted_right"] == 3 and sources["embedding centroids"][
        "picked_right"] == 3
