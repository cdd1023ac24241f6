"""`tests/foreign_confound.py`, the generator cellio did not write whose plates carry a strong style (issue 20): its
layout is what cellio reads as RxRx1 (validated metadata, 4 plate groups, train rotations 0..2, test rotation 3,
pixel_stats.csv), its output is a pure function of its arguments whatever the worker count, `--confound 0` makes
the plates of an experiment look alike while 1 makes them differ in focus and gain, and its phenotypes are shown by
a share of the cells, with heavy-tailed, partly cell-type-specific effects."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

import cellio

sys.path.insert(0, str(Path(__file__).parent))
import foreign_confound  # noqa: E402
from foreign_layout import NEGATIVE, POSITIVE, WELLS  # noqa: E402

KW = dict(classes=8, train=3, test=1, size=72, missing=0.1, seed=3, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return foreign_confound.generate(tmp_path_factory.mktemp("confound") / "rxrx1", workers=1, **KW)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_layout_is_rxrx1_with_the_rotations_and_the_truth_held_out(raw):
    sites = cellio.read_metadata(raw, check_files=True)
    assert set(sites["cell_type"]) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    assert sites["site"].nunique() == 2 and len(sites) % 2 == 0
    assert sorted(sites["experiment"].unique()) == [f"{c}-0{k}" for c in ("HEPG2", "HUVEC", "RPE", "U2OS")
                                                    for k in (1, 2, 3, 4)]
    train = sites[sites["dataset"] == "train"]
    groups = cellio.derive_plate_groups(train)
    assert sorted(s for g in groups.groups for s in g) == list(range(8))
    for exp, rot in groups.rotations.items():  # train experiments k = 1, 2, 3 of a cell type: rotations 0, 1, 2
        assert rot == int(exp.split("-")[1]) - 1, (exp, rot)
    truth = pd.read_csv(raw / "test_truth.csv")
    test = pd.read_csv(raw / "test.csv")
    assert "sirna" not in test.columns and sorted(truth["id_code"]) == sorted(test["id_code"])
    plate_of = test.set_index("id_code")["plate"]
    for code, sirna in truth.itertuples(index=False):  # test plate p holds group (p - 1 + 3) % 4
        assert sirna in groups.groups[(plate_of[code] - 1 + 3) % 4]
    controls = pd.concat([pd.read_csv(raw / f) for f in ("train_controls.csv", "test_controls.csv")])
    assert set(controls.loc[controls["well"] == "B02", "sirna"]) == {NEGATIVE}
    assert set(controls.loc[controls["well_type"] == "positive_control", "sirna"]) == set(POSITIVE)
    stats = pd.read_csv(raw / "pixel_stats.csv")
    assert len(stats) == 6 * len(sites)
    assert pd.read_csv(raw / "sample_submission.csv")["id_code"].tolist() == test["id_code"].tolist()


def test_the_same_bytes_for_any_worker_count(raw, tmp_path):
    other = foreign_confound.generate(tmp_path / "three", workers=3, **KW)
    assert _digests(raw) == _digests(other)


def test_the_command_line_passes_its_flags(tmp_path):
    args = ["--classes", "8", "--train", "1", "--test", "0", "--size", "40", "--seed", "5", "--workers", "1",
            "--confound", "0", "--strength", "2"]
    run = subprocess.run([sys.executable, str(Path(foreign_confound.__file__)), str(tmp_path / "cli"), *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    direct = foreign_confound.generate(tmp_path / "direct", classes=8, train=1, test=0, size=40, seed=5, workers=1,
                                       confound=0.0, strength=2.0, progress=False)
    assert _digests(tmp_path / "cli") == _digests(direct)
    # the written pixels are site_images' with the flags given; the default confound would give others
    row = ("train", "HEPG2-01", 0, 0, "HEPG2", 2, "B02", NEGATIVE, "negative_control")
    written = np.asarray(Image.open(tmp_path / "cli" / "train/HEPG2-01/Plate2/B02_s1_w3.png"))
    assert np.array_equal(written, foreign_confound.site_images(40, 5, 2.0, 0.0, row, 1)[2])
    assert not np.array_equal(written, foreign_confound.site_images(40, 5, 2.0, 1.0, row, 1)[2])


def _plate_looks(confound: float, e_idx: int = 0, ctype: str = "HEPG2", size: int = 128, wells: int = 8):
    """Per plate of one experiment, over negative-control sites at `wells` wells: the share of each channel's
    variance above a 1 px Gaussian (focus), and the channel means relative to w1 (gain)."""
    hf, ratio = [], []
    for plate in (1, 2, 3, 4):
        h, m = [], []
        for well in WELLS[:wells]:
            row = ("train", "X", e_idx, 0, ctype, plate, well, NEGATIVE, "negative_control")
            img = foreign_confound.site_images(size, 7, 1.0, confound, row, 1).astype(np.float32)
            h.append([((x - gaussian_filter(x, 1.0)) ** 2).mean() / x.var() for x in img])
            m.append(img.reshape(6, -1).mean(1))
        hf.append(np.mean(h, 0))
        mean = np.mean(m, 0)
        ratio.append(mean / mean[0])
    return np.array(hf), np.array(ratio)


def test_confound_zero_makes_the_plates_of_an_experiment_alike_and_one_makes_them_differ():
    hf0, ratio0 = _plate_looks(0.0)
    hf1, ratio1 = _plate_looks(1.0)
    focus0 = hf0.max(0) / hf0.min(0)  # per channel, sharpest plate / blurriest plate
    focus1 = hf1.max(0) / hf1.min(0)
    gain0 = ratio0.max(0) / ratio0.min(0)
    gain1 = ratio1.max(0) / ratio1.min(0)
    assert focus0.max() < 1.12 and gain0.max() < 1.15, (focus0, gain0)
    assert np.median(focus1) > 1.4, focus1
    assert gain1.max() > 1.4, gain1
    # the four focus levels are always all used, so an experiment's plates never share a focus by chance
    levels = sorted(foreign_confound.plate_style(7, e, p, 1.0)["focus"] for e in range(3) for p in (1, 2, 3, 4))
    assert levels[-1] - levels[0] > 1.8


def test_a_phenotype_is_shown_by_part_of_the_cells():
    sirna, ctype, c_idx = 5, "RPE", 2
    pen, effect = foreign_confound.phenotype(sirna, c_idx, seed=7, strength=1.0)
    effect = np.asarray(effect)
    assert 0.1 <= pen <= 0.9 and np.linalg.norm(effect) > 0
    row = ("train", "X", 0, c_idx, ctype, 1, "C03", sirna, "treatment")
    cells = [foreign_confound.site_cells(96, 7, 1.0, 1.0, row[:6] + (w,) + row[7:], site)
             for w in WELLS[10:40] for site in (1, 2)]
    affected = np.concatenate([c["affected"] for c in cells])
    z = np.concatenate([c["z"] for c in cells])
    assert 0 < affected.mean() < 1 and abs(affected.mean() - pen) < 0.06
    drift = foreign_confound.experiment_batch(7, 0)["drift"]
    shift = z[affected].mean(0) - drift  # affected cells carry the effect, the others look like controls
    assert np.allclose(shift, effect, atol=0.25), (shift, effect)
    assert np.allclose(z[~affected].mean(0) - drift, 0, atol=0.15)
    control = foreign_confound.site_cells(96, 7, 1.0, 1.0, row[:7] + (NEGATIVE, "negative_control"), 1)
    assert not control["affected"].any()
    none = foreign_confound.site_cells(96, 7, 0.0, 1.0, row, 1)
    assert not none["affected"].any()


def test_effects_are_heavy_tailed_and_partly_cell_type_specific():
    norms = np.array([np.linalg.norm(foreign_confound.phenotype(s, 0, seed=7, strength=1.0)[1]) for s in range(400)])
    assert np.median(norms) < 0.7 and (norms > 1.5).mean() > 0.03 and norms.max() > 4 * np.median(norms)
    doubled = np.array([np.linalg.norm(foreign_confound.phenotype(s, 0, seed=7, strength=2.0)[1]) for s in range(400)])
    assert np.allclose(doubled, 2 * norms)
    cos = []
    for s in range(50):
        a, b = (np.asarray(foreign_confound.phenotype(s, c, seed=7, strength=1.0)[1]) for c in (0, 1))
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.2 < np.median(cos) < 0.9, np.median(cos)  # shared in part, not the same in every cell type
    pos = [np.asarray(foreign_confound.phenotype(POSITIVE[0], c, seed=7, strength=1.0)[1]) for c in range(4)]
    assert all(np.array_equal(pos[0], p) for p in pos) and np.linalg.norm(pos[0]) > 3 * np.median(norms)


def test_bad_arguments_are_refused_with_the_parameter_named(tmp_path):
    with pytest.raises(ValueError, match="classes=10"):
        foreign_confound.generate(tmp_path, classes=10, size=40, progress=False)
    with pytest.raises(ValueError, match="confound=-1"):
        foreign_confound.generate(tmp_path, classes=8, size=40, confound=-1.0, progress=False)
