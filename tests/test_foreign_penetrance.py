"""`tests/foreign_penetrance.py`, the third generator cellio did not write (partially penetrant per-cell
phenotypes): its layout is what cellio reads as RxRx1 (validated metadata, 4 plate groups, test rotation 3,
pixel_stats.csv), its output is a pure function of its arguments whatever the worker count, and its phenotypes
are per cell, not per site mean."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cellio

sys.path.insert(0, str(Path(__file__).parent))
import foreign_penetrance  # noqa: E402

KW = dict(classes=8, train=1, test=1, size=72, missing=0.1, seed=3, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return foreign_penetrance.generate(tmp_path_factory.mktemp("pen") / "rxrx1", workers=1, **KW)


def test_the_layout_is_rxrx1_and_the_truth_is_held_out(raw):
    sites = cellio.read_metadata(raw, check_files=True)
    assert set(sites["cell_type"]) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    assert sites["site"].nunique() == 2 and len(sites) % 2 == 0
    train = sites[sites["dataset"] == "train"]
    groups = cellio.derive_plate_groups(train)
    assert sorted(s for g in groups.groups for s in g) == list(range(8))
    assert set(groups.rotations.values()) == {0}  # one train experiment per cell type: rotation 0
    truth = pd.read_csv(raw / "test_truth.csv")
    test = pd.read_csv(raw / "test.csv")
    assert "sirna" not in test.columns and sorted(truth["id_code"]) == sorted(test["id_code"])
    # a test plate p holds group (p - 1 + 3) % 4: the plate structure the assignment relies on
    plate_of = test.set_index("id_code")["plate"]
    for (code, sirna) in truth.itertuples(index=False):
        assert sirna in groups.groups[(plate_of[code] - 1 + 3) % 4]
    stats = pd.read_csv(raw / "pixel_stats.csv")
    assert len(stats) == 6 * len(sites)


def test_the_same_bytes_for_any_worker_count(raw, tmp_path):
    other = foreign_penetrance.generate(tmp_path / "two", workers=2, **KW)
    for png in ["test/HEPG2-02/Plate1/B02_s1_w1.png", "train/U2OS-01/Plate4/B02_s2_w6.png"]:
        assert (raw / png).read_bytes() == (other / png).read_bytes()
    assert (raw / "train.csv").read_text() == (other / "train.csv").read_text()


def test_a_phenotype_is_a_share_of_affected_cells_with_cell_type_specific_motifs():
    # per (siRNA, cell type): a penetrance in (0, 1) and 2-3 motifs, some shared across cell types, some not
    progs = {ct: foreign_penetrance.phenotype(5, ct, seed=21, strength=1.0) for ct in range(4)}
    for pen, motifs in progs.values():
        assert 0.0 < pen < 1.0 and 2 <= len(motifs) <= 3
    kinds = [{m[0] for m in motifs} for _, motifs in progs.values()]
    assert set.intersection(*kinds) and set.union(*kinds) != set.intersection(*kinds)
    weak, strong = (foreign_penetrance.phenotype(5, 0, seed=21, strength=s)[0] for s in (0.5, 1.0))
    assert weak == pytest.approx(strong / 2)
    assert np.isfinite(strong)
