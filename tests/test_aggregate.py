"""Per-well aggregation of TTA views and ensembling, on hand-made and simulated logits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellio.errors import ConfigError, MetadataError
from trainer.infer import aggregate as agg
from trainer.infer.aggregate import WellScores


def _sites(wells: list[str]) -> pd.DataFrame:
    """A minimal site table: two sites per well, in cellio's row order."""
    rows = []
    for w in wells:
        exp, plate, well = w.split("_")
        for site in (1, 2):
            rows.append({"id_code": w, "dataset": "test", "experiment": exp, "cell_type": exp.split("-")[0],
                         "plate": int(plate), "well": well, "site": site, "well_type": "treatment",
                         "sirna": pd.NA})
    frame = pd.DataFrame(rows)
    frame["sirna"] = frame["sirna"].astype("Int64")
    return frame


def test_vote_differs_from_mean_where_it_should():
    sites = _sites(["HUVEC-17_1_B03"])
    # Three views weakly prefer class 10; one view is very sure of class 20: mean -> 20, vote -> 10.
    logits = np.array([[2.0, 1.5, 0.0], [2.0, 1.5, 0.0], [2.0, 1.5, 0.0], [0.0, 20.0, 0.0]], dtype=np.float32)
    index = np.array([0, 0, 1, 1])
    classes = [10, 20, 30]
    assert agg.mean_logits(logits, index, sites, classes=classes).labels().tolist() == [20]
    assert agg.majority_vote(logits, index, sites, classes=classes).labels().tolist() == [10]
    assert agg.mean_probs(logits, index, sites, classes=classes).labels().tolist() == [20]
    # A 2-2 tie in votes goes to the higher mean probability.
    tie = np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 9.0, 0.0]], dtype=np.float32)
    assert agg.majority_vote(tie, index, sites, classes=classes).labels().tolist() == [20]


def test_mean_matches_groupby_reference_with_shuffled_rows_and_small_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    wells = [f"RPE-0{e}_{p}_C{c:02d}" for e in (8, 9) for p in (1, 2) for c in (3, 4, 5)]
    sites = _sites(wells)
    index = np.repeat(np.arange(len(sites)), 5)          # 5 views per site
    perm = rng.permutation(len(index))
    index = index[perm]
    logits = rng.normal(size=(len(index), 7)).astype(np.float32)
    classes = np.arange(7) * 3

    import trainer.infer.logits

    monkeypatch.setattr(trainer.infer.logits, "CHUNK_ROWS", 7)  # row blocks split wells
    got = agg.mean_logits(logits, index, sites, classes=classes)
    ref = pd.DataFrame(logits).groupby(sites["id_code"].to_numpy()[index]).mean().sort_index()
    assert got.id_codes.tolist() == ref.index.tolist()
    np.testing.assert_allclose(got.scores, ref.to_numpy(), rtol=1e-5, atol=1e-6)

    probs = agg.mean_probs(logits, index, sites, classes=classes)
    np.testing.assert_allclose(probs.scores.sum(axis=1), 1.0, rtol=1e-5)
    # Geometric mean of probabilities, renormalised, is softmax of the mean logits: identical argmax and values.
    geo = agg.geometric_mean(logits, index, sites, classes=classes)
    np.testing.assert_allclose(np.exp(geo.scores), agg.softmax(got.scores), rtol=1e-4, atol=1e-6)
    assert (geo.labels() == got.labels()).all()


def test_single_view_takes_view_zero_of_site_one():
    sites = _sites(["HEPG2-08_1_B03", "HEPG2-08_1_B04"])
    # rows: (site index, view) in scrambled order
    index = np.array([3, 1, 0, 2, 0, 1, 2, 3])
    view = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    logits = np.zeros((8, 3), dtype=np.float32)
    logits[4, 2] = 5.0   # site row 0 = B03 site 1, view 0 -> class 2
    logits[3, 0] = 5.0   # site row 2 = B04 site 1, view 1 (ignored)
    logits[6, 1] = 5.0   # site row 2 = B04 site 1, view 0 -> class 1
    got = agg.single_view(logits, index, sites, classes=[0, 1, 2], view=view)
    assert got.id_codes.tolist() == ["HEPG2-08_1_B03", "HEPG2-08_1_B04"]
    assert got.labels().tolist() == [2, 1]
    with pytest.raises(ConfigError, match="view"):
        agg.aggregate("single_view", logits, index, sites, classes=[0, 1, 2])


def test_ensemble_aligns_class_maps_by_sirna():
    ids = np.array(["U2OS-04_1_B03", "U2OS-04_1_B04"], dtype=object)
    a = WellScores(ids, np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32), np.array([0, 1, 2]))
    # Model b: columns in another order plus a control class, wells in another order.
    b = WellScores(ids[::-1].copy(), np.array([[5.0, 1.0, 3.0, 0.0], [9.0, 3.0, 1.0, 7.0]], np.float32),
                   np.array([2, 0, 1, 1108]))
    ens = agg.ensemble([a, b], weights=[1.0, 3.0])
    assert ens.classes.tolist() == [0, 1, 2, 1108]
    # well B03 in b is row 1: sirna0=3, sirna1=1, sirna2=9, 1108=7
    np.testing.assert_allclose(ens.select(["U2OS-04_1_B03"]).scores[0], [(1 + 9) / 4, (2 + 3) / 4, (3 + 27) / 4, 7])
    inter = agg.ensemble([a, b], classes="intersection")
    assert inter.classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(inter.select(["U2OS-04_1_B04"]).scores[0], [(3 + 1) / 2, (2 + 3) / 2, (1 + 5) / 2])
    with pytest.raises(MetadataError):
        agg.ensemble([a, WellScores(ids[:1], a.scores[:1], a.classes)])
    with pytest.raises(ConfigError):
        agg.ensemble([a, b], weights=[1.0])


def test_ensemble_of_noisy_models_is_not_worse_than_its_members():
    rng = np.random.default_rng(1)
    n, c = 400, 20
    truth = rng.integers(0, c, n)
    ids = np.array([f"HUVEC-18_1_W{i:04d}" for i in range(n)], dtype=object)
    members = []
    for _ in range(3):
        s = rng.normal(size=(n, c)).astype(np.float32) * 1.5
        s[np.arange(n), truth] += 2.0
        members.append(WellScores(ids, s, np.arange(c)))
    accs = [(m.labels() == truth).mean() for m in members]
    assert (agg.ensemble(members).labels() == truth).mean() > max(accs)


def test_save_load_roundtrip_and_errors(tmp_path):
    ws = WellScores(np.array(["A-01_1_B03"], dtype=object), np.ones((1, 2), np.float32), np.array([4, 9]), "probs")
    back = agg.load_well_scores(agg.save_well_scores(ws, tmp_path / "w.npz"))
    assert back.kind == "probs" and back.classes.tolist() == [4, 9] and back.id_codes.tolist() == ["A-01_1_B03"]
    with pytest.raises(ConfigError, match="columns"):
        agg.mean_logits(np.zeros((2, 3)), np.array([0, 1]), _sites(["A-01_1_B03"]), classes=[1, 2])
    with pytest.raises(MetadataError, match="out of range"):
        agg.mean_logits(np.zeros((1, 2)), np.array([5]), _sites(["A-01_1_B03"]), classes=[1, 2])
    with pytest.raises(ConfigError, match="unknown aggregation"):
        agg.aggregate("median", np.zeros((1, 2)), np.array([0]), _sites(["A-01_1_B03"]), classes=[1, 2])
