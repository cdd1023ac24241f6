"""cellio.datasets.rxrx1.metadata: the site table from a hand-written Kaggle-layout directory, the rxrx.ai layout, precise
validation errors (file, row, column), and plate groups."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellio.errors import MetadataError
from cellio.datasets.rxrx1.metadata import read_metadata
from cellio.datasets.rxrx1.plate_groups import PlateGroups, derive_plate_groups
from cellio.schema import PATH_COLUMNS, PIXEL_MEAN_COLUMNS, PIXEL_STD_COLUMNS, SITE_COLUMNS

CSVS = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv", "sample_submission.csv",
        "pixel_stats.csv")


# -- a hand-written RxRx1 directory (not produced by cellio.synth) ------------------------------------------

HAND_TRAIN = """id_code,experiment,plate,well,sirna
HUVEC-01_1_B03,HUVEC-01,1,B03,5
HUVEC-01_2_C04,HUVEC-01,2,C04,7
U2OS-01_3_O23,U2OS-01,3,O23,1107
"""
HAND_TEST = """id_code,experiment,plate,well
HUVEC-02_1_D05,HUVEC-02,1,D05
"""
HAND_TRAIN_CONTROLS = """id_code,experiment,plate,well,sirna,well_type
HUVEC-01_1_B02,HUVEC-01,1,B02,1138,negative_control
HUVEC-01_1_E06,HUVEC-01,1,E06,1108,positive_control
"""
HAND_TEST_CONTROLS = """id_code,experiment,plate,well,sirna,well_type
HUVEC-02_1_B02,HUVEC-02,1,B02,1138,negative_control
"""
HAND_SUBMISSION = """id_code,sirna
HUVEC-02_1_D05,0
"""


def _write_hand(root: Path, *, images: bool = True, sites: tuple[int, ...] = (1, 2)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.csv", HAND_TRAIN), ("test.csv", HAND_TEST),
                       ("train_controls.csv", HAND_TRAIN_CONTROLS), ("test_controls.csv", HAND_TEST_CONTROLS),
                       ("sample_submission.csv", HAND_SUBMISSION)):
        (root / name).write_text(text)
    if images:
        ids = [("train", "HUVEC-01", 1, "B03"), ("train", "HUVEC-01", 2, "C04"), ("train", "U2OS-01", 3, "O23"),
               ("train", "HUVEC-01", 1, "B02"), ("train", "HUVEC-01", 1, "E06"), ("test", "HUVEC-02", 1, "D05"),
               ("test", "HUVEC-02", 1, "B02")]
        px = np.arange(17 * 11, dtype=np.uint8).reshape(17, 11)
        for ds, exp, plate, well in ids:
            d = root / ds / exp / f"Plate{plate}"
            d.mkdir(parents=True, exist_ok=True)
            for s in sites:
                for c in range(1, 7):
                    Image.fromarray(px).save(d / f"{well}_s{s}_w{c}.png")
    return root


def test_hand_written_directory_loads(tmp_path):
    raw = _write_hand(tmp_path / "hand")
    sites = read_metadata(raw, check_files=True)
    assert list(sites.columns) == list(SITE_COLUMNS)
    assert len(sites) == 7 * 2 and sites.index.tolist() == list(range(14))
    assert sites.attrs["raw_dir"] == str(raw.resolve())
    # dtypes of the contract
    assert sites["plate"].dtype == np.int64 and sites["site"].dtype == np.int64
    assert str(sites["sirna"].dtype) == "Int64"
    assert all(sites[c].dtype == np.float64 for c in (*PIXEL_MEAN_COLUMNS, *PIXEL_STD_COLUMNS))
    assert sites[list(PIXEL_MEAN_COLUMNS)].isna().all().all()  # no pixel_stats.csv
    # sort order: train before test, then experiment, plate, well, site
    assert sites["dataset"].tolist() == ["train"] * 10 + ["test"] * 4
    assert sites["id_code"].tolist()[:6] == ["HUVEC-01_1_B02"] * 2 + ["HUVEC-01_1_B03"] * 2 + ["HUVEC-01_1_E06"] * 2
    assert sites["site"].tolist()[:2] == [1, 2]
    row = sites[sites["id_code"] == "U2OS-01_3_O23"].iloc[1]
    assert row["cell_type"] == "U2OS" and row["sirna"] == 1107 and row["well_type"] == "treatment"
    assert row["path_w3"] == "train/U2OS-01/Plate3/O23_s2_w3.png"
    assert all((raw / p).is_file() for p in sites[list(PATH_COLUMNS)].to_numpy().ravel())
    wells = sites.drop_duplicates("id_code").set_index("id_code")
    assert wells.loc["HUVEC-01_1_B02", "well_type"] == "negative_control"
    assert wells.loc["HUVEC-01_1_E06", "well_type"] == "positive_control" and wells.loc["HUVEC-01_1_E06", "sirna"] == 1108
    assert pd.isna(wells.loc["HUVEC-02_1_D05", "sirna"])
    assert wells.loc["HUVEC-02_1_B02", "sirna"] == 1138  # test controls keep their labels
    assert set(sites["cell_type"]) == {"HUVEC", "U2OS"}


def test_sites_are_inferred_from_images_then_default(tmp_path):
    one_site = read_metadata(_write_hand(tmp_path / "one", sites=(1,)))
    assert len(one_site) == 7 and set(one_site["site"]) == {1}
    default = read_metadata(_write_hand(tmp_path / "none", images=False))
    assert len(default) == 14 and set(default["site"]) == {1, 2}


def test_pixel_stats_fill_columns_and_define_sites(tmp_path):
    raw = _write_hand(tmp_path / "ps", images=False)
    rows = []
    for idc in ("HUVEC-01_1_B03", "HUVEC-01_2_C04", "U2OS-01_3_O23", "HUVEC-01_1_B02", "HUVEC-01_1_E06",
                "HUVEC-02_1_D05", "HUVEC-02_1_B02"):
        exp, plate, well = idc.split("_")
        for c in range(1, 7):
            rows.append((idc, exp, int(plate), well, 1, c, 10.0 * c, float(c)))
    stats = pd.DataFrame(rows, columns=["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std"])
    stats.to_csv(raw / "pixel_stats.csv", index=False)  # without the optional median/min/max
    sites = read_metadata(raw)
    assert len(sites) == 7 and set(sites["site"]) == {1}
    assert sites["pixel_mean_w4"].eq(40.0).all() and sites["pixel_std_w6"].eq(6.0).all()
    # also zipped, like Kaggle offers it
    (raw / "pixel_stats.csv").unlink()
    stats.to_csv(raw / "pixel_stats.csv.zip", index=False,
                 compression={"method": "zip", "archive_name": "pixel_stats.csv"})
    assert read_metadata(raw)["pixel_mean_w2"].eq(20.0).all()
    assert read_metadata(raw, pixel_stats=False)["pixel_mean_w2"].isna().all()


def test_rxrx_ai_metadata_layout(tmp_path):
    raw = tmp_path / "rxrx1_v1"
    raw.mkdir()
    rows = [
        ("HUVEC-01_1_B03_1", "HUVEC-01_1_B03", "HUVEC", "train", "HUVEC-01", 1, "B03", 1, "treatment", "s21721", 5),
        ("HUVEC-01_1_B03_2", "HUVEC-01_1_B03", "HUVEC", "train", "HUVEC-01", 1, "B03", 2, "treatment", "s21721", 5),
        ("HUVEC-01_1_B02_1", "HUVEC-01_1_B02", "HUVEC", "train", "HUVEC-01", 1, "B02", 1, "negative_control",
         "EMPTY", 1138),
        ("RPE-02_4_J10_1", "RPE-02_4_J10", "RPE", "test", "RPE-02", 4, "J10", 1, "positive_control", "s2", 1110),
        ("RPE-02_4_K11_2", "RPE-02_4_K11", "RPE", "test", "RPE-02", 4, "K11", 2, "treatment", "s9", 77),
    ]
    cols = ["site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site", "well_type",
            "sirna", "sirna_id"]
    pd.DataFrame(rows, columns=cols).to_csv(raw / "metadata.csv", index=False)
    sites = read_metadata(raw)
    assert list(sites.columns) == list(SITE_COLUMNS) and len(sites) == 5
    assert sites["dataset"].tolist() == ["train"] * 3 + ["test"] * 2
    assert sites["sirna"].tolist() == [1138, 5, 5, 1110, 77]
    assert sites["well_type"].tolist()[0] == "negative_control"
    assert sites.loc[4, "path_w6"] == "images/RPE-02/Plate4/K11_s2_w6.png"
    bad = pd.DataFrame(rows, columns=cols)
    bad.loc[1, "site_id"] = "HUVEC-01_1_B03_9"
    bad.to_csv(raw / "metadata.csv", index=False)
    with pytest.raises(MetadataError, match=r"metadata\.csv row 2 \(line 3\), column 'site_id'"):
        read_metadata(raw)


# -- malformed copies of a valid set: each error names file, row and column -----------------------------------

@pytest.fixture()
def raw_copy(tiny_raw, tmp_path):
    """The tiny synthetic set's CSVs (no images) in a fresh directory, to corrupt."""
    dst = tmp_path / "raw"
    dst.mkdir()
    for name in CSVS:
        shutil.copy(tiny_raw / name, dst / name)
    return dst


def _edit(raw: Path, name: str, fn) -> None:
    df = pd.read_csv(raw / name, dtype=str, keep_default_na=False)
    fn(df)
    df.to_csv(raw / name, index=False)


def _set(row: int, **values):
    def fn(df):
        for k, v in values.items():
            df.loc[row, k] = v
    return fn


def test_valid_copy_loads(raw_copy):
    assert len(read_metadata(raw_copy)) == 320


def test_missing_column(raw_copy):
    _edit(raw_copy, "train.csv", lambda df: df.pop("plate"))
    with pytest.raises(MetadataError, match=r"train\.csv \(header, line 1\): missing column\(s\) \['plate'\]"):
        read_metadata(raw_copy)


def test_extra_column(raw_copy):
    _edit(raw_copy, "test_controls.csv", lambda df: df.insert(2, "cell_type", "HUVEC"))
    with pytest.raises(MetadataError, match=r"test_controls\.csv \(header, line 1\): unexpected column\(s\) \['cell_type'\]"):
        read_metadata(raw_copy)


def test_extra_pixel_stats_column(raw_copy):
    _edit(raw_copy, "pixel_stats.csv", lambda df: df.insert(0, "foo", "1"))
    with pytest.raises(MetadataError, match=r"pixel_stats\.csv .*unexpected column\(s\) \['foo'\]"):
        read_metadata(raw_copy)


@pytest.mark.parametrize("well", ["A01", "P24", "Z9", "B1"])
def test_bad_well(raw_copy, well):
    _edit(raw_copy, "train.csv", _set(2, well=well))
    with pytest.raises(MetadataError, match=rf"train\.csv row 3 \(line 4\), column 'well': found '{well}'"):
        read_metadata(raw_copy)


def test_plate_out_of_range(raw_copy):
    _edit(raw_copy, "test.csv", _set(0, plate="5"))
    with pytest.raises(MetadataError, match=r"test\.csv row 1 \(line 2\), column 'plate': found '5', expected a plate"):
        read_metadata(raw_copy)


def test_id_code_mismatch(raw_copy):
    _edit(raw_copy, "train_controls.csv", _set(4, id_code="HEPG2-01_4_C07"))
    with pytest.raises(MetadataError, match=r"train_controls\.csv row 5 \(line 6\), column 'id_code'"):
        read_metadata(raw_copy)


def test_duplicate_id_code(raw_copy):
    _edit(raw_copy, "train.csv", lambda df: _append(df.loc[1].tolist())(df))
    n = len(pd.read_csv(raw_copy / "train.csv"))
    with pytest.raises(MetadataError, match=rf"train\.csv row {n} \(line {n + 1}\), column 'id_code'.*duplicate"):
        read_metadata(raw_copy)


def test_unknown_cell_type(raw_copy):
    _edit(raw_copy, "train.csv", _set(0, experiment="HELA-01", id_code="HELA-01_1_XXX"))
    with pytest.raises(MetadataError, match=r"train\.csv row 1 \(line 2\), column 'experiment': found 'HELA-01'.*cell type"):
        read_metadata(raw_copy)


@pytest.mark.parametrize("value", ["abc", "3.5", ""])
def test_non_integer_sirna(raw_copy, value):
    _edit(raw_copy, "train.csv", _set(3, sirna=value))
    with pytest.raises(MetadataError, match=rf"train\.csv row 4 \(line 5\), column 'sirna': found '{value}', expected an integer"):
        read_metadata(raw_copy)


def test_sirna_out_of_range(raw_copy):
    _edit(raw_copy, "train.csv", _set(3, sirna="1108"))  # a control id on a treatment row
    with pytest.raises(MetadataError, match=r"train\.csv row 4 \(line 5\), column 'sirna': found '1108', expected a treatment"):
        read_metadata(raw_copy)


def test_control_sirna_must_match_well_type(raw_copy):
    _edit(raw_copy, "test_controls.csv", _set(0, sirna="1108"))  # row 1 is the B02 negative control
    with pytest.raises(MetadataError, match=r"test_controls\.csv row 1 \(line 2\), column 'sirna': found '1108', expected 1138"):
        read_metadata(raw_copy)


def test_sample_submission_must_match_test(raw_copy):
    _edit(raw_copy, "sample_submission.csv", _set(0, id_code="HUVEC-01_1_B03"))
    with pytest.raises(MetadataError, match=r"sample_submission\.csv row 1 \(line 2\), column 'id_code'.*test\.csv"):
        read_metadata(raw_copy)


def test_several_problems_are_counted(raw_copy):
    _edit(raw_copy, "train.csv", lambda df: [_set(i, well="A01")(df) for i in range(3)])
    _edit(raw_copy, "test.csv", _set(0, plate="0"))
    with pytest.raises(MetadataError, match=r"^4 problem\(s\)") as err:
        read_metadata(raw_copy)
    assert "train.csv row 3" in str(err.value) and "test.csv row 1" in str(err.value)


def _append(row: list[str]):
    def fn(df):
        df.loc[len(df)] = row
    return fn


def test_test_well_also_in_test_controls_becomes_a_control(raw_copy):
    ctrl = pd.read_csv(raw_copy / "test_controls.csv", dtype=str).iloc[3]
    _edit(raw_copy, "test.csv", _append([ctrl["id_code"], ctrl["experiment"], ctrl["plate"], ctrl["well"]]))
    _edit(raw_copy, "sample_submission.csv", _append([ctrl["id_code"], "0"]))
    sites = read_metadata(raw_copy)
    assert len(sites) == 320  # no extra well
    row = sites[sites["id_code"] == ctrl["id_code"]].iloc[0]
    assert row["well_type"] == ctrl["well_type"] and row["sirna"] == int(ctrl["sirna"])


def test_train_well_conflicting_with_controls(raw_copy):
    ctrl = pd.read_csv(raw_copy / "train_controls.csv", dtype=str).iloc[0]
    _edit(raw_copy, "train.csv", _append([ctrl["id_code"], ctrl["experiment"], ctrl["plate"], ctrl["well"], "3"]))
    n = len(pd.read_csv(raw_copy / "train.csv"))
    with pytest.raises(MetadataError, match=rf"train\.csv row {n} \(line {n + 1}\), column 'sirna': id_code "
                                            rf"'{ctrl['id_code']}' has sirna 3 but train_controls\.csv"):
        read_metadata(raw_copy)


def test_missing_images_with_check_files(tmp_path):
    raw = _write_hand(tmp_path / "hand")
    (raw / "train" / "HUVEC-01" / "Plate2" / "C04_s2_w5.png").unlink()
    read_metadata(raw)  # without check_files, sites are still inferred and nothing is stat-ed
    with pytest.raises(MetadataError, match=r"missing image file train/HUVEC-01/Plate2/C04_s2_w5\.png"):
        read_metadata(raw, check_files=True)


def test_missing_csv_and_directory(tmp_path):
    raw = _write_hand(tmp_path / "hand", images=False)
    (raw / "test_controls.csv").unlink()
    with pytest.raises(MetadataError, match=r"test_controls\.csv"):
        read_metadata(raw)
    with pytest.raises(MetadataError, match="not found"):
        read_metadata(tmp_path / "nowhere")


# -- plate groups -------------------------------------------------------------------------------------------

def test_plate_groups_round_trip(tiny_raw):
    groups = derive_plate_groups(read_metadata(tiny_raw))
    again = PlateGroups.from_dict(json.loads(json.dumps(groups.to_dict())))
    assert again == groups
    assert pickle.loads(pickle.dumps(groups)) == groups
    with pytest.raises(TypeError):
        groups.rotations["HEPG2-01"] = 3  # read-only
    s = groups.groups[2][0]
    assert groups.group_of(s) == 2
    assert groups.plate_group(plate=1, rotation=2) == 2 and groups.plate_group(4, 3) == 2
    assert groups.allowed_sirnas(3, 0) == groups.groups[2]
    with pytest.raises(MetadataError, match="no plate group"):
        groups.group_of(1138)
    with pytest.raises(MetadataError, match="plate=5"):
        groups.plate_group(5, 0)


def test_plate_groups_from_train_csv_like_frame(tiny_raw):
    train = pd.read_csv(tiny_raw / "train.csv")
    truth = json.loads((tiny_raw / "synth.json").read_text())
    assert [list(g) for g in derive_plate_groups(train).groups] == truth["groups"]


def test_plate_groups_errors(tiny_raw):
    train = pd.read_csv(tiny_raw / "train.csv")
    # Swapping two plates of one experiment breaks the cyclic rotation.
    swapped = train.copy()
    u2os = swapped["experiment"] == "U2OS-01"
    swapped.loc[u2os, "plate"] = swapped.loc[u2os, "plate"].map({1: 2, 2: 1, 3: 3, 4: 4})
    with pytest.raises(MetadataError, match=r"experiment 'U2OS-01' plate \d"):
        derive_plate_groups(swapped)
    # A mislabelled well links two groups: 3 components.
    merged = train.copy()
    other = merged.loc[(merged["experiment"] == "HEPG2-01") & (merged["plate"] == 2), "sirna"].iloc[0]
    merged.loc[merged.index[0], "sirna"] = other
    with pytest.raises(MetadataError, match="form 3 connected group"):
        derive_plate_groups(merged)


def test_pixel_stats_problems(raw_copy):
    stats = pd.read_csv(raw_copy / "pixel_stats.csv", dtype=str, keep_default_na=False)
    stats.drop(index=[4]).to_csv(raw_copy / "pixel_stats.csv", index=False)  # one channel of one site
    with pytest.raises(MetadataError, match=rf"pixel_stats\.csv: id_code '{stats.loc[4, 'id_code']}' site 1 lacks"):
        read_metadata(raw_copy)
    well = stats.loc[0, "id_code"]
    stats[stats["id_code"] != well].to_csv(raw_copy / "pixel_stats.csv", index=False)
    with pytest.raises(MetadataError, match=rf"pixel_stats\.csv: no rows for id_code '{well}'"):
        read_metadata(raw_copy)
    bad = stats.copy()
    bad.loc[9, "channel"] = "7"
    bad.to_csv(raw_copy / "pixel_stats.csv", index=False)
    with pytest.raises(MetadataError, match=r"pixel_stats\.csv row 10 \(line 11\), column 'channel': found 7, expected an integer in 1..6"):
        read_metadata(raw_copy)
