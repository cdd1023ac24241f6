"""cellio.datasets.rxrx1.synth: the synthetic RxRx1 generator writes the exact Kaggle layout, the real plate structure, a
deterministic output, and a signal that is not in the per-channel pixel statistics."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellio.errors import ConfigError
from cellio.datasets.rxrx1.metadata import read_metadata
from cellio.datasets.rxrx1.plate_groups import derive_plate_groups
from cellio.schema import ALL_WELLS, CELL_TYPES, NEGATIVE_CONTROL_SIRNA, POSITIVE_CONTROL_SIRNAS
from cellio.datasets.rxrx1.synth import encode_png, synthesize

SMALL = dict(classes=4, train_experiments_per_cell_type=1, test_experiments_per_cell_type=1,
             cell_types=("HUVEC",), sites=1, size=(17, 11), positive_controls=1, progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_raw_counts_and_layout(tiny_raw):
    # tiny_raw: 8 classes, 4 cell types x (1 train + 1 test) experiment, 2 positive controls, 2 sites, 17x11.
    sites = read_metadata(tiny_raw, check_files=True)
    assert len(sites) == 4 * 2 * 4 * (1 + 2 + 2) * 2
    wells = sites.drop_duplicates("id_code")
    assert wells["well_type"].value_counts().to_dict() == {
        "treatment": 4 * 2 * 4 * 2, "positive_control": 4 * 2 * 4 * 2, "negative_control": 4 * 2 * 4}
    assert sorted(sites["cell_type"].unique()) == list(CELL_TYPES)
    assert sorted(sites["experiment"].unique()) == sorted(
        f"{ct}-{i:02d}" for ct in CELL_TYPES for i in (1, 2))
    assert set(sites.loc[sites["dataset"] == "test", "experiment"].str[-2:]) == {"02"}
    neg = wells[wells["well_type"] == "negative_control"]
    assert (neg["well"] == "B02").all() and (neg["sirna"] == NEGATIVE_CONTROL_SIRNA).all()
    assert len(neg) == wells.groupby(["experiment", "plate"]).ngroups  # one per plate
    pos = wells[wells["well_type"] == "positive_control"]
    assert set(pos["sirna"]) == set(POSITIVE_CONTROL_SIRNAS[:2])
    assert wells.loc[wells["well_type"] == "treatment", "well"].isin(ALL_WELLS).all()
    # Test treatments are unlabelled in the Kaggle files; the truth is held out in test_truth.csv.
    assert sites.loc[(sites["dataset"] == "test") & (sites["well_type"] == "treatment"), "sirna"].isna().all()
    truth = pd.read_csv(tiny_raw / "test_truth.csv")
    assert list(truth.columns) == ["id_code", "sirna"]
    assert set(truth["id_code"]) == set(pd.read_csv(tiny_raw / "test.csv")["id_code"])
    sub = pd.read_csv(tiny_raw / "sample_submission.csv")
    assert list(sub.columns) == ["id_code", "sirna"] and (sub["sirna"] == 0).all()


def test_exact_kaggle_csv_columns(tiny_raw):
    expected = {
        "train.csv": ["id_code", "experiment", "plate", "well", "sirna"],
        "test.csv": ["id_code", "experiment", "plate", "well"],
        "train_controls.csv": ["id_code", "experiment", "plate", "well", "sirna", "well_type"],
        "test_controls.csv": ["id_code", "experiment", "plate", "well", "sirna", "well_type"],
        "pixel_stats.csv": ["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std", "median",
                            "min", "max"],
        "sample_submission.csv": ["id_code", "sirna"],
    }
    for name, cols in expected.items():
        assert list(pd.read_csv(tiny_raw / name, nrows=1).columns) == cols, name


def test_png_is_8bit_grayscale_with_height_width_order(tiny_raw):
    path = tiny_raw / "train" / "HUVEC-01" / "Plate1" / "B02_s1_w1.png"
    img = Image.open(path)
    assert img.mode == "L" and img.format == "PNG"
    assert np.asarray(img).shape == (17, 11)


def test_encode_png_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((17, 11), (1, 1), (5, 300)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(a)))), a)


def test_plate_groups_and_rotations_match_the_generator(tiny_raw):
    truth = json.loads((tiny_raw / "synth.json").read_text())
    sites = read_metadata(tiny_raw)
    groups = derive_plate_groups(sites)
    assert [list(g) for g in groups.groups] == truth["groups"]
    train_exps = sorted(sites.loc[sites["dataset"] == "train", "experiment"].unique())
    assert dict(groups.rotations) == {e: truth["rotations"][e] for e in train_exps}
    assert set(groups.rotations.values()) <= {0, 1, 2}          # train uses 3 of the 4 rotations
    assert 3 in {truth["rotations"][e] for e in truth["rotations"] if e not in train_exps}  # the 4th is in test
    # Every plate holds exactly one group, each siRNA once, in the group the rotation says (test: via truth).
    labelled = pd.concat([
        pd.read_csv(tiny_raw / "train.csv"),
        pd.read_csv(tiny_raw / "test.csv").merge(pd.read_csv(tiny_raw / "test_truth.csv"), on="id_code"),
    ])
    for (exp, plate), rows in labelled.groupby(["experiment", "plate"]):
        expected = groups.allowed_sirnas(plate, truth["rotations"][exp])
        assert sorted(rows["sirna"]) == list(expected), (exp, plate)


def test_well_positions_vary_per_plate(tiny_raw):
    train = pd.read_csv(tiny_raw / "train.csv")
    layouts = {tuple(sorted(rows["well"])) for _, rows in train.groupby(["experiment", "plate"])}
    assert len(layouts) > 1


def test_deterministic_across_workers(tmp_path):
    one = synthesize(tmp_path / "w1", workers=1, seed=3, **SMALL)
    two = synthesize(tmp_path / "w2", workers=2, seed=3, **SMALL)
    assert one["sites"] == two["sites"] == 1 * 2 * 4 * 3
    assert _tree(tmp_path / "w1") == _tree(tmp_path / "w2")


def test_different_seed_differs(tmp_path):
    synthesize(tmp_path / "a", workers=1, seed=1, **SMALL)
    synthesize(tmp_path / "b", workers=1, seed=2, **SMALL)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a["train.csv"] != b["train.csv"]
    same_name = sorted(set(a) & set(b) - {"synth.json"})
    assert same_name and any(a[k] != b[k] for k in same_name if k.endswith(".png"))


def test_missing_wells_make_rectangular_plates(tmp_path):
    out = synthesize(tmp_path / "m", workers=1, seed=0, missing_wells=0.5,
                     **{**SMALL, "classes": 40, "positive_controls": 0})
    sites = read_metadata(tmp_path / "m", check_files=True)
    per_plate = sites[sites["well_type"] == "treatment"].groupby(["experiment", "plate"])["id_code"].nunique()
    assert per_plate.max() < 10 and per_plate.nunique() > 1  # 10 per plate without missing wells
    assert out["well_types"]["treatment"] == sites.loc[sites["well_type"] == "treatment", "id_code"].nunique()


def test_zip_members_are_relative_to_the_dataset_folder(tmp_path):
    out = synthesize(tmp_path / "z", workers=1, zip=True, **SMALL)
    assert sorted(Path(z).name for z in out["zips"]) == ["test.zip", "train.zip"]
    with zipfile.ZipFile(tmp_path / "z" / "train.zip") as zf:
        names = zf.namelist()
        assert "HUVEC-01/Plate1/B02_s1_w1.png" in names
        assert zf.read("HUVEC-01/Plate1/B02_s1_w1.png") == (tmp_path / "z/train/HUVEC-01/Plate1/B02_s1_w1.png").read_bytes()
    assert len(names) == out["train_sites"] * 6


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": 6}, "multiple of 4"),
    ({"size": (0, 5)}, "positive"),
    ({"cell_types": ("HELA",)}, "cell_types"),
    ({"positive_controls": 31}, "positive_controls"),
    ({"missing_wells": 1.0}, "missing_wells"),
    ({"seed": -1}, "seed"),
    ({"sites": 0}, "sites"),
])
def test_bad_parameters_raise(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        synthesize(tmp_path / "x", **{**SMALL, **kwargs})


def test_pixel_stats_carry_no_class_but_texture_does(tmp_path):
    # 8 classes; train on 3 experiments per cell type, score on 1; fixed seed.
    out = synthesize(tmp_path / "c", classes=8, train_experiments_per_cell_type=3, test_experiments_per_cell_type=1,
                     cell_types=("HUVEC", "U2OS"), sites=2, size=(40, 40), positive_controls=0, seed=0,
                     workers=1, progress=False, check=True)
    check = out["classifier"]
    assert check is not None and check["n_eval_sites"] == 8 * 2 * 2
    assert check["chance"] == pytest.approx(1 / 8)
    assert check["pixel_stats_accuracy"] < 0.4                      # near chance (0.125)
    assert check["texture_accuracy"] > check["pixel_stats_accuracy"] + 0.25
    # pixel_stats.csv means match the images and the site table.
    stats = pd.read_csv(tmp_path / "c" / "pixel_stats.csv")
    row = stats.iloc[7]
    img = np.asarray(Image.open(tmp_path / "c" / "train" / row["experiment"] / f"Plate{row['plate']}"
                                / f"{row['well']}_s{row['site']}_w{row['channel']}.png"))
    assert row["mean"] == pytest.approx(img.mean(), abs=1e-3)
    assert row["std"] == pytest.approx(img.std(), abs=1e-3)
    assert row["median"] == np.median(img) and row["min"] == img.min() and row["max"] == img.max()


def test_cli_synth_and_metadata(tmp_path, capsys):
    from cellio.cli import main

    assert main(["synth", str(tmp_path / "cli"), "--classes", "4", "--train-experiments", "1",
                 "--cell-types", "RPE", "--sites", "1", "--size", "17x11", "--positive-controls", "1",
                 "--workers", "1", "--no-progress", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "wrote 24 sites" in out and "17x11" in out
    assert main(["metadata", str(tmp_path / "cli"), "--check-files", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == 24 and summary["plate_groups"]["sizes"] == [1, 1, 1, 1]
    assert main(["metadata", str(tmp_path / "cli")]) == 0
    assert "plate groups: 4 groups" in capsys.readouterr().out
