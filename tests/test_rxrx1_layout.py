"""cellio synth --layout rxrx1: the real data set's experiments, plates, wells, controls and missing wells."""
from __future__ import annotations

import numpy as np
import pytest

from cellio.errors import ConfigError
from cellio.schema import ALL_WELLS, NEGATIVE_CONTROL_SIRNA, POSITIVE_CONTROL_SIRNAS
from cellio.datasets.rxrx1.synth import rxrx1_experiments, rxrx1_wells, synthesize


def test_experiments_are_the_real_list():
    train, test = rxrx1_experiments()
    assert len(train) == 33 and len(test) == 18
    assert {e for e in train if e.startswith("HUVEC")} == {f"HUVEC-{i:02d}" for i in range(1, 17)}
    assert {e for e in test if e.startswith("HEPG2")} == {f"HEPG2-{i:02d}" for i in range(8, 12)}
    assert {e for e in test if e.startswith("U2OS")} == {"U2OS-04", "U2OS-05"}
    assert {e for e in train if e.startswith("RPE")} == {f"RPE-{i:02d}" for i in range(1, 8)}


def test_wells_have_the_real_cardinality_and_plate_structure():
    wells, groups, rotations = rxrx1_wells(seed=0)
    treat = wells[wells["well_type"] == "treatment"]
    assert len(treat[treat["dataset"] == "train"]) == 36_515     # train.csv
    assert len(treat[treat["dataset"] == "test"]) == 19_897      # test.csv, sample_submission.csv
    assert len(treat[treat["experiment"] == "HUVEC-14"]) == 1_090
    assert 2 * len(wells) == 125_472                             # sites (the real set: 125,510)
    assert sorted(len(g) for g in groups) == [277] * 4 and len(set().union(*map(set, groups))) == 1108
    for (exp, plate), p in wells.groupby(["experiment", "plate"]):
        assert p["well"].is_unique and set(p["well"]) <= set(ALL_WELLS)
        neg = p[p["well_type"] == "negative_control"]
        assert neg["well"].tolist() == ["B02"] and neg["sirna"].tolist() == [NEGATIVE_CONTROL_SIRNA]
        assert sorted(p.loc[p["well_type"] == "positive_control", "sirna"]) == list(POSITIVE_CONTROL_SIRNAS)
        group = groups[(plate - 1 + rotations[exp]) % 4]
        assert set(p.loc[p["well_type"] == "treatment", "sirna"]) <= set(group)
    train, test = rxrx1_experiments()
    assert {rotations[e] for e in train} == {0, 1, 2} and 3 in {rotations[e] for e in test}


def test_a_reduced_layout_writes_the_same_wells_as_the_whole(tmp_path):
    import pandas as pd

    out = synthesize(tmp_path / "r", layout="rxrx1", experiments=["U2OS-05"], size=8, workers=2,
                     progress=False, pixel_stats=False)
    assert out["experiments"] == ["U2OS-05"]
    wells, _, _ = rxrx1_wells(seed=0)
    want = wells[(wells["experiment"] == "U2OS-05") & (wells["well_type"] == "treatment")]
    sub = pd.read_csv(tmp_path / "r" / "sample_submission.csv")
    assert sub["id_code"].tolist() == want["id_code"].tolist()
    truth = pd.read_csv(tmp_path / "r" / "test_truth.csv")
    assert np.array_equal(truth["sirna"].to_numpy(), want["sirna"].to_numpy())
    assert out["sites"] == 2 * int((wells["experiment"] == "U2OS-05").sum())


def test_unknown_layout_or_experiment_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        synthesize(tmp_path / "x", layout="rxrx2")
    with pytest.raises(ConfigError, match="HUVEC-25"):
        synthesize(tmp_path / "x", layout="rxrx1", experiments=["HUVEC-25"])
