"""Data the project did not generate: `tests/foreign_rxrx1.py` writes an RxRx1-layout set with independent code
(its own renderer, PIL PNGs, the Kaggle CSV schemas, missing wells, no pixel_stats.csv), and the whole main job
must run on it: metadata -> ingest -> loader -> train -> predict -> assignment -> a valid submission."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cellio

sys.path.insert(0, str(Path(__file__).parent))
import foreign_rxrx1  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return foreign_rxrx1.write(tmp_path_factory.mktemp("foreign") / "rxrx1", classes=16, size=40)


def test_metadata_matches_the_csvs(foreign):
    sites = cellio.read_metadata(foreign, check_files=True)
    train = pd.read_csv(foreign / "train.csv")
    test = pd.read_csv(foreign / "test.csv")
    controls = pd.concat([pd.read_csv(foreign / "train_controls.csv"), pd.read_csv(foreign / "test_controls.csv")])
    assert len(sites) == 2 * (len(train) + len(test) + len(controls))
    wells = sites.drop_duplicates("id_code").set_index("id_code")
    assert (wells.loc[train["id_code"], "sirna"].to_numpy() == train["sirna"].to_numpy()).all()
    assert wells.loc[test["id_code"], "sirna"].isna().all()
    assert (wells.loc[controls["id_code"], "well_type"].to_numpy() == controls["well_type"].to_numpy()).all()
    assert set(sites["cell_type"]) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
    on_plate = train.groupby(["experiment", "plate"])["sirna"].apply(frozenset)
    gsets = [frozenset(g) for g in groups.groups]
    assert sorted(s for g in gsets for s in g) == list(range(16))
    for plate_sirnas in on_plate:  # missing wells: a plate holds a subset of exactly one group
        assert sum(plate_sirnas <= g for g in gsets) == 1
    assert sorted(set(groups.rotations.values())) == [0, 1]  # 2 train experiments per cell type: rotations 0, 1


# a tiny plan: fixed steps (no measurement), small crops
QUICK = ["plan.steps_single=30", "plan.steps_pseudo=10", "plan.pseudo_rounds=2", "plan.crop=24", "plan.batch=16"]


def test_main_job_runs_on_foreign_data(foreign, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "trainer.demo", "--data", str(foreign), "--out", str(out), *QUICK],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(foreign / "sample_submission.csv")
    assert list(sub.columns) == ["id_code", "sirna"]
    assert sub["id_code"].tolist() == sample["id_code"].tolist()
    assert np.issubdtype(sub["sirna"].dtype, np.integer) and sub["sirna"].between(0, 15).all()
    report = json.loads((out / "report.json").read_text())
    chosen = report["submission"]
    assert chosen["step"] == chosen["ranking"][0][0]  # the step validation ranks first is submitted
    if "plate assignment" in chosen["step"]:  # each treatment siRNA at most once per plate
        plates = sub["id_code"].str.rsplit("_", n=1).str[0]
        assert not sub.assign(plate=plates).duplicated(["plate", "sirna"]).any()
    report = json.loads((out / "report.json").read_text())
    assert {"validation", "test"} <= set(report["splits"])

    # resumable: a rerun ingests nothing, trains nothing new, and writes the same submission
    again = subprocess.run([sys.executable, "-m", "trainer.demo", "--data", str(foreign), "--out", str(out), *QUICK],
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(0 written by this run, 0 failed)" in again.stdout
    assert pd.read_csv(out / "submission.csv").equals(sub)
