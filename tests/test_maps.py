"""trainer/maps: aggregation, the control-based corrections, EFAAR's benchmarks and copairs' mAP on tiny inputs
whose answers are worked out by hand, checks against the efaar-benchmarking package's own functions, bad input,
and the synthetic knockout screen's generator (read back with pyarrow + imagecodecs)."""
from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from trainer.maps import (CORRECTIONS, MapInputError, MapSpec, MissingControlsError, PerturbationMap, WellProfiles,
                          aggregate, annotation_dir, build_map, centerscale_on_controls, check_guide_names,
                          coral_align, correct, embed_by_pca, guides_to_genes, pca_centerscale_on_controls, read_map,
                          read_well_embeddings, relationship_recall, relationships, replicate_map, signal_consistency,
                          sister_map, tvn_on_controls, write_map, write_well_embeddings)
from trainer.maps.annotations import SOURCES, THRESHOLDS
from trainer.maps.cli import main as maps_main

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ROOT / "tests" / "formats"
sys.path.insert(0, str(FORMATS))
import rxrx3_maps  # noqa: E402


def _wells(genes=("AAA", "BBB", "CCC"), guides=2, plates=(("gene-001", 1), ("gene-001", 2), ("gene-002", 1)),
           controls=3, features=5, seed=0) -> WellProfiles:
    rows = []
    for exp, plate in plates:
        for g in genes:
            for k in range(1, guides + 1):
                rows.append(dict(well_id=f"{exp}_{plate}_{g}{k}", experiment_name=exp, plate=plate, gene=g,
                                 treatment=f"{g}_guide_{k}", perturbation_type="CRISPR"))
        for c in range(controls):
            rows.append(dict(well_id=f"{exp}_{plate}_C{c}", experiment_name=exp, plate=plate, gene="EMPTY_control",
                             treatment="EMPTY_control", perturbation_type="CRISPR"))
    meta = pd.DataFrame(rows)
    x = np.random.default_rng(seed).normal(size=(len(meta), features)) * np.arange(1, features + 1)
    return WellProfiles.build(x, meta)


# ----------------------------------------------------------------------------------------------- aggregation
def test_aggregate_means_and_medians_over_wells_and_guides_by_hand():
    meta = pd.DataFrame({"well_id": list("abcdefg"), "gene": ["G1"] * 3 + ["G2"] * 4,
                         "treatment": ["G1_guide_1", "G1_guide_1", "G1_guide_2", "G2_guide_1", "G2_guide_1",
                                       "G2_guide_1", "G2_guide_2"]})
    x = np.array([[1, 10], [3, 20], [11, 0], [0, 0], [2, 6], [10, 3], [4, 4]], dtype=float)
    wells = WellProfiles.build(x, meta)
    guide_mean = aggregate(wells, "treatment", "mean")
    assert guide_mean.labels.tolist() == ["G1_guide_1", "G1_guide_2", "G2_guide_1", "G2_guide_2"]
    np.testing.assert_allclose(guide_mean.features, [[2, 15], [11, 0], [4, 3], [4, 4]])
    assert guide_mean.metadata["gene"].tolist() == ["G1", "G1", "G2", "G2"]  # constant within a guide: carried
    assert guide_mean.metadata["n_wells"].tolist() == [2, 1, 3, 1]
    assert guide_mean.metadata["single_well"].tolist() == [False, True, False, True]
    np.testing.assert_allclose(aggregate(wells, "treatment", "median").features, [[2, 15], [11, 0], [2, 3], [4, 4]])
    # over wells: G1 = mean of 3 wells; over guides: mean of the 2 guide means (each guide weighs the same)
    np.testing.assert_allclose(aggregate(wells, "gene", "mean").features, [[5, 10], [4, 13 / 4]])
    by_guides = guides_to_genes(guide_mean, "gene", "mean")
    np.testing.assert_allclose(by_guides.features, [[6.5, 7.5], [4, 3.5]])
    assert by_guides.metadata[["n_guides", "n_wells"]].values.tolist() == [[2, 3], [2, 4]]
    np.testing.assert_allclose(guides_to_genes(guide_mean, "gene", "median").features, [[6.5, 7.5], [4, 3.5]])


def test_single_well_perturbation_is_kept_and_flagged(caplog):
    meta = pd.DataFrame({"well_id": ["a", "b", "c"], "gene": ["G1", "G1", "LONE"],
                         "treatment": ["G1_guide_1", "G1_guide_1", "LONE_guide_1"]})
    with caplog.at_level(logging.WARNING, logger="trainer.maps.aggregate"):
        pmap = aggregate(WellProfiles.build(np.arange(6.0).reshape(3, 2), meta), "gene")
    assert pmap.labels.tolist() == ["G1", "LONE"]
    assert pmap.metadata.loc[pmap.metadata["gene"] == "LONE", "single_well"].item()
    np.testing.assert_allclose(pmap.features[1], [4, 5])
    assert "LONE" in caplog.text


def test_aggregate_excludes_only_what_it_is_told_and_refuses_empty_keys():
    wells = _wells()
    with_controls = aggregate(wells, "gene")
    assert "EMPTY_control" in with_controls.labels
    assert "EMPTY_control" not in aggregate(wells, "gene", exclude=["EMPTY_control"]).labels
    meta = wells.metadata.copy()
    meta.loc[4, "gene"] = None
    with pytest.raises(MapInputError, match=r"'gene' is empty in 1 well\(s\), first at row 4"):
        aggregate(WellProfiles.build(wells.features, meta), "gene")
    with pytest.raises(MapInputError, match="expected one of"):
        aggregate(wells, "gene", method="trimmed")


def test_guide_names_must_follow_the_gene():
    meta = pd.DataFrame({"gene": ["TP53", "EMPTY_control", "TP53"],
                         "treatment": ["TP53_guide_1", "EMPTY_control", "MDM2_guide_2"]})
    with pytest.raises(MapInputError, match=r"row 2: treatment 'MDM2_guide_2' is not 'TP53_guide_<k>'"):
        check_guide_names(meta)
    check_guide_names(meta.iloc[:2])


# ----------------------------------------------------------------------------------------------- corrections
def _controls_and_batches(wells: WellProfiles, cols=("experiment_name", "plate")):
    controls = (wells.metadata["treatment"] == "EMPTY_control").to_numpy()
    batches = wells.metadata[list(cols)].astype(str).agg("/".join, axis=1).to_numpy()
    return controls, batches


def test_centerscale_centres_and_scales_each_batchs_controls():
    wells = _wells(controls=4)
    controls, batches = _controls_and_batches(wells)
    x = wells.features + np.where(batches == "gene-002/1", 100.0, 0.0)[:, None]  # a batch offset
    z = centerscale_on_controls(x, controls, batches)
    for b in np.unique(batches):
        c = z[(batches == b) & controls]
        np.testing.assert_allclose(c.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(c.std(0), 1, atol=1e-12)
    assert not np.allclose(z[~controls].mean(0), 0)  # the perturbations are not forced to zero


def test_pca_cs_centres_each_batchs_controls_to_zero():
    wells = _wells(controls=6)
    controls, batches = _controls_and_batches(wells)
    z = pca_centerscale_on_controls(wells.features * 3 + 7, controls, batches)
    for b in np.unique(batches):
        np.testing.assert_allclose(z[(batches == b) & controls].mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(z[(batches == b) & controls].std(0), 1, atol=1e-12)


def test_tvn_whitens_the_controls_covariance_to_identity():
    r = np.random.default_rng(3)
    mix = r.normal(size=(4, 4))
    x = r.normal(size=(61, 4)) @ mix + 5  # correlated features; 40 controls > 4 features
    controls = np.arange(61) < 40
    z = tvn_on_controls(x, controls)
    np.testing.assert_allclose(z[controls].mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(z[controls], rowvar=False, ddof=0), np.eye(4), atol=1e-10)
    assert np.abs(np.cov(x[controls], rowvar=False) - np.eye(4)).max() > 0.5  # it was not white before


def test_coral_aligns_a_batchs_control_covariance_to_the_pooled_controls():
    r = np.random.default_rng(4)
    a = r.normal(size=(30, 3)) @ np.array([[2.0, 0.5, 0], [0, 1.0, 0], [0, 0.3, 0.5]])
    b = r.normal(size=(25, 3)) @ np.array([[0.4, 0, 0], [0.8, 2.0, 0], [0, 0, 1.5]])
    x = np.concatenate([a, b])
    batches = np.array(["A"] * 30 + ["B"] * 25)
    controls = np.ones(55, bool)
    controls[[3, 40]] = False  # two non-control wells follow their batch's transform
    pooled = np.cov(x[controls], rowvar=False)
    z = coral_align(x, controls, batches, reg=0.0)
    for batch in "AB":
        np.testing.assert_allclose(np.cov(z[(batches == batch) & controls], rowvar=False), pooled, atol=1e-10)
    assert not np.allclose(np.cov(x[(batches == "B") & controls], rowvar=False), pooled, atol=0.1)


def test_no_controls_in_a_batch_refuses_tvn_naming_the_batch():
    wells = _wells()
    meta = wells.metadata
    orphan = ((meta["experiment_name"] == "gene-002") & (meta["treatment"] == "EMPTY_control")).to_numpy()
    lost = WellProfiles.build(wells.features[~orphan], meta[~orphan])
    with pytest.raises(MissingControlsError, match=r"tvn: batch 'gene-002/1' has 0 negative-control well"):
        correct(lost, "tvn", batch=("experiment_name", "plate"))
    with pytest.raises(MissingControlsError, match=r"coral: batch 'gene-002' has 0"):
        correct(lost, "tvn", batch=None, coral_batch=("experiment_name",))
    with pytest.raises(MissingControlsError, match="no well has treatment == 'NTC'"):
        correct(wells, "pca_cs", control="NTC")


@pytest.fixture
def efaar_efaar(monkeypatch):
    """efaar_benchmarking.efaar, which imports scvi-tools at the top for one function we do not use: loaded with
    a stand-in `scvi.model` module so its other functions can be compared with ours."""
    scvi = types.ModuleType("scvi")
    scvi.model = types.ModuleType("scvi.model")
    scvi.model.SCVI = object
    monkeypatch.setitem(sys.modules, "scvi", scvi)
    monkeypatch.setitem(sys.modules, "scvi.model", scvi.model)
    monkeypatch.delitem(sys.modules, "efaar_benchmarking.efaar", raising=False)
    import efaar_benchmarking.efaar as efaar

    return efaar


def test_corrections_give_efaars_numbers(efaar_efaar):
    wells = _wells(controls=8, features=4)
    meta = wells.metadata.assign(batch=wells.metadata["experiment_name"] + "/" + wells.metadata["plate"].astype(str))
    controls = (meta["treatment"] == "EMPTY_control").to_numpy()
    x = wells.features
    ours = centerscale_on_controls(x, controls, meta["batch"].to_numpy())
    theirs = efaar_efaar.centerscale_on_controls(x, meta, "treatment", "EMPTY_control", batch_col="batch")
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    np.testing.assert_allclose(centerscale_on_controls(x, controls),
                               efaar_efaar.centerscale_on_controls(x, meta, "treatment", "EMPTY_control"), atol=1e-12)
    # TVN: ours with EFAAR's pooled first step; CORAL re-colours to the pooled controls, a constant factor after TVN
    theirs = efaar_efaar.tvn_on_controls(x, meta, "treatment", "EMPTY_control", batch_col="batch")
    ours = tvn_on_controls(x, controls, None, coral_batches=meta["batch"].to_numpy())
    n = int(controls.sum())
    np.testing.assert_allclose(ours, theirs * np.sqrt(n / (n - 1) + 0.5), atol=1e-8)
    np.testing.assert_allclose(tvn_on_controls(x, controls), efaar_efaar.tvn_on_controls(
        x, meta, "treatment", "EMPTY_control"), atol=1e-10)


def test_embed_by_pca_gives_efaars_numbers(efaar_efaar):
    wells = _wells(features=6)
    meta = wells.metadata
    np.testing.assert_allclose(embed_by_pca(wells.features, 3),
                               efaar_efaar.embed_by_pca(wells.features, meta, 3), atol=1e-10)
    np.testing.assert_allclose(embed_by_pca(wells.features, 4, meta["experiment_name"].to_numpy()),
                               efaar_efaar.embed_by_pca(wells.features, meta, 4, batch_col="experiment_name"),
                               atol=1e-10)


def test_correct_dispatches_every_correction_and_keeps_the_wells():
    wells = _wells(controls=6)
    for method in CORRECTIONS:
        out = correct(wells, method, batch=("experiment_name", "plate"), coral_batch=("experiment_name",))
        assert len(out) == len(wells) and out.metadata.equals(wells.metadata)
    assert correct(wells, "none") is wells
    assert correct(wells, "none", embed_dims=3).n_features == 3 and correct(wells, "tvn", embed_dims=9).n_features == 5
    with pytest.raises(MapInputError, match="correction 'combat'"):
        correct(wells, "combat")


# ----------------------------------------------------------------------------------------------- benchmarks
def _toy_map() -> PerturbationMap:
    # angles 0, 10, 40, 100, 180 degrees: cosines between them known exactly
    deg = np.radians([0, 10, 40, 100, 180])
    feats = np.stack([np.cos(deg), np.sin(deg)], 1)
    return PerturbationMap(feats, pd.DataFrame({"gene": ["A", "B", "C", "D", "E"]}), ("gene",))


def test_relationship_recall_on_a_toy_map_by_hand():
    # the 10 null pairs, by angle: A-E 180, B-E 170, C-E 140, A-D 100, B-D 90, D-E 80, C-D 60, A-C 40, B-C 30,
    # A-B 10 (sorted from least to most similar). Known pairs A-B, A-C, A-E (B-Z: Z is not in the map).
    # A-B: 9 null values below it -> rank 0.9 >= 0.9; A-E: 1 null value <= it -> rank 0.1 <= 0.1; A-C: rank 0.7/0.8.
    # So recall at (0.1, 0.9) is 2/3; at (0.05, 0.95) none is beyond: 0.
    rels = pd.DataFrame({"entity1": ["A", "A", "A", "B"], "entity2": ["B", "C", "E", "Z"]})
    table = relationship_recall(_toy_map(), ["TOY"], [(0.1, 0.9), (0.05, 0.95)], tables={"TOY": rels})
    row = table.iloc[0]
    assert row["null_distribution_size"] == 10 and row["query_distribution_size"] == 3
    assert row["recall_0.1_0.9"] == pytest.approx(2 / 3)
    assert row["recall_0.05_0.95"] == 0
    # split by batch: A, B in batch 1, C, D, E in batch 2 -> A-B within (a hit at 0.1/0.9), A-C and A-E across
    # (A-E a hit): within 1/1, across 1/2, against the same 10-pair null
    toy = _toy_map()
    toy = PerturbationMap(toy.features, toy.metadata.assign(batch=["1", "1", "2", "2", "2"]), toy.key)
    split = relationship_recall(toy, ["TOY"], [(0.1, 0.9)], tables={"TOY": rels}, batch_col="batch").iloc[0]
    assert split["within_size"] == 1 and split["across_size"] == 2
    assert split["within_recall_0.1_0.9"] == 1.0 and split["across_recall_0.1_0.9"] == pytest.approx(0.5)
    assert split["recall_0.1_0.9"] == pytest.approx(2 / 3)


def test_relationship_recall_gives_known_relationship_benchmarks_numbers(tmp_path):
    bench = pytest.importorskip("efaar_benchmarking.benchmarking")
    from sklearn.utils import Bunch

    r = np.random.default_rng(0)
    genes = [f"G{i:02d}" for i in range(23)]
    pairs = pd.DataFrame({"entity1": r.choice(genes, 40), "entity2": r.choice(genes, 40)})
    pairs.to_csv(tmp_path / "TOY.txt", index=False)
    feats = r.normal(size=(23, 7))
    pmap = PerturbationMap(feats, pd.DataFrame({"gene": genes}), ("gene",))
    ours = relationship_recall(pmap, ["TOY"], THRESHOLDS, annotation_dir=tmp_path)
    theirs = bench.known_relationship_benchmark(Bunch(features=pd.DataFrame(feats), metadata=pmap.metadata),
                                                "gene", ["TOY"], list(THRESHOLDS), benchmark_data_dir=str(tmp_path))
    cols = ["source", "null_distribution_size", "query_distribution_size", "recall_0.05_0.95", "recall_0.1_0.9"]
    pd.testing.assert_frame_equal(ours[cols], theirs[cols], check_dtype=False)


def test_relationship_recall_reports_a_source_without_pairs():
    table = relationship_recall(_toy_map(), ["TOY", "TOY2"], [(0.1, 0.9)],
                                tables={"TOY": pd.DataFrame({"entity1": ["X"], "entity2": ["Y"]}),
                                        "TOY2": pd.DataFrame({"entity1": ["A"], "entity2": ["B"]})})
    assert table["source"].tolist() == ["TOY", "TOY2"]
    assert table.iloc[0]["query_distribution_size"] == 0 and np.isnan(table.iloc[0]["recall_0.1_0.9"])
    assert table.iloc[1]["recall_0.1_0.9"] == 1


def test_signal_consistency_on_a_toy():
    r = np.random.default_rng(1)
    rows, feats = [], []

    def add(pert, vectors):
        for v in vectors:
            rows.append({"gene": pert})
            feats.append(v)
    for n in ("OR1", "OR2", "OR3", "OR4"):  # null perturbations: orthogonal replicates, mean cosine 0
        add(n, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    add("SAME", [[1, 2, 3, 4]] * 3)        # mean cosine 1 > every null value: p = 0
    add("OPPOSITE", [[1, 1, 0, 0], [-1, -1, 0, 0]])  # mean cosine -1: p = 1
    add("LONE", [[0, 0, 0, 1]])             # one well: untestable (NaN)
    add("EMPTY_control", r.normal(size=(3, 4)))
    wells = WellProfiles.build(np.array(feats, float), pd.DataFrame(rows), id_col=None)
    cons = signal_consistency(wells, "gene", ["OR1", "OR2", "OR3", "OR4", "ORX"], drop=["EMPTY_control"])
    table = cons.per_perturbation.set_index("pert")
    assert sorted(table.index) == ["LONE", "OPPOSITE", "SAME"] and cons.n_null == 4
    assert table.loc["SAME", "avgcossim"] == pytest.approx(1) and table.loc["SAME", "pval"] == 0
    assert table.loc["OPPOSITE", "avgcossim"] == pytest.approx(-1) and table.loc["OPPOSITE", "pval"] == 1
    assert np.isnan(table.loc["LONE", "pval"]) and cons.n_untestable == 1
    assert cons.fraction_consistent == pytest.approx(1 / 3)
    with pytest.raises(MapInputError, match="none of the 1 null perturbations"):
        signal_consistency(wells, "gene", ["NOPE"])


def test_replicate_and_sister_map_through_copairs():
    r = np.random.default_rng(2)
    rows, feats = [], []
    centres = {g: r.normal(size=6) * 5 for g in ("G1", "G2", "G3")}
    for g, c in centres.items():
        for k in (1, 2):
            for _ in range(3):
                rows.append({"gene": g, "treatment": f"{g}_guide_{k}", "experiment_name": "e1"})
                feats.append(c + r.normal(size=6) * 0.05)
    for _ in range(6):
        rows.append({"gene": "EMPTY_control", "treatment": "EMPTY_control", "experiment_name": "e1"})
        feats.append(r.normal(size=6))
    wells = WellProfiles.build(np.array(feats), pd.DataFrame(rows), id_col=None)
    rep = replicate_map(wells, null_size=2000)
    assert len(rep.per_query) == 6 and rep.mean_map == pytest.approx(1.0)
    sis = sister_map(aggregate(wells.subset((wells.metadata["gene"] != "EMPTY_control").to_numpy()), "treatment"),
                     "gene", same_batch="experiment_name", null_size=2000)
    assert sis.mean_map == pytest.approx(1.0) and len(sis.per_query) == 3
    shuffled = wells.with_features(r.normal(size=wells.features.shape))
    assert replicate_map(shuffled, null_size=2000).mean_map < 0.9


# ----------------------------------------------------------------------------------------------- annotations
def test_annotation_tables_are_the_installed_packages_not_a_copy():
    import efaar_benchmarking
    import efaar_benchmarking.constants as cst

    where = annotation_dir()
    assert where.is_dir() and (where / "CORUM.txt").is_file()
    assert Path(efaar_benchmarking.__file__).parent in where.parents
    assert any(part in ("site-packages", "dist-packages") for part in where.parts)
    # the environment's own copy (a .venv inside the checkout is fine; a copy among the repo's files is not)
    assert Path(sys.prefix).resolve() in where.resolve().parents
    ours = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts and p.is_file()}
    assert not ours & ({f"{s}.txt" for s in cst.BENCHMARK_SOURCES} | {"CORUM_clusters.tsv"})
    assert SOURCES == tuple(cst.BENCHMARK_SOURCES) and [tuple(t) for t in cst.RECALL_PERC_THRS] == list(THRESHOLDS)
    signor = relationships("SIGNOR")
    raw = pd.read_csv(where / "SIGNOR.txt")
    assert len(signor) > 1000 and list(signor.columns) == ["entity1", "entity2"]
    assert (signor["entity1"] < signor["entity2"]).all() and not signor.duplicated().any()
    raw_pairs = {tuple(sorted(p)) for p in raw[["entity1", "entity2"]].itertuples(index=False) if p[0] != p[1]}
    assert set(signor.itertuples(index=False, name=None)) == raw_pairs


# ----------------------------------------------------------------------------------------------- bad input
def test_embeddings_and_metadata_of_different_lengths_are_refused():
    meta = pd.DataFrame({"well_id": ["a", "b", "c"]})
    with pytest.raises(MapInputError, match="4 embedding rows but 3 metadata rows"):
        WellProfiles.build(np.zeros((4, 2)), meta)


def test_nans_are_named_not_dropped():
    x = np.ones((3, 4))
    x[2, 1] = np.nan
    with pytest.raises(MapInputError, match=r"1 NaN/inf feature value\(s\) in 1 row\(s\); first at row 2 "
                                            r"\(well_id 'c'\), feature f1"):
        WellProfiles.build(x, pd.DataFrame({"well_id": ["a", "b", "c"]}))
    with pytest.raises(MapInputError, match="appears more than once"):
        WellProfiles.build(np.ones((2, 1)), pd.DataFrame({"well_id": ["a", "a"]}))


def test_embeddings_parquet_round_trip_and_its_errors(tmp_path):
    wells = _wells()
    path = write_well_embeddings(wells, tmp_path / "emb.parquet")
    back = read_well_embeddings(path)
    np.testing.assert_allclose(back.features, wells.features)
    assert back.metadata.equals(wells.metadata)
    # embeddings with only well ids + a separate metadata table (RxRx3-core's CSV)
    frame = pd.read_parquet(path)
    frame[["well_id", "f0", "f1", "f2", "f3", "f4"]].to_parquet(tmp_path / "bare.parquet")
    wells.metadata.iloc[::-1].to_csv(tmp_path / "meta.csv", index=False)
    joined = read_well_embeddings(tmp_path / "bare.parquet", tmp_path / "meta.csv")
    assert joined.metadata["well_id"].tolist() == wells.metadata["well_id"].tolist()
    assert joined.metadata["gene"].tolist() == wells.metadata["gene"].tolist()
    wells.metadata.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(MapInputError, match=r"1 embedded well\(s\) have no metadata"):
        read_well_embeddings(tmp_path / "bare.parquet", tmp_path / "short.csv")
    frame.drop(columns=["f2"]).to_parquet(tmp_path / "gap.parquet")
    with pytest.raises(MapInputError, match=r"f0..f4 expected, \['f2'\] missing"):
        read_well_embeddings(tmp_path / "gap.parquet")


def test_map_files_parquet_and_h5ad(tmp_path):
    built = build_map(_wells(controls=4), MapSpec(correction="centerscale", batch=("experiment_name", "plate")))
    paths = write_map(built.genes, tmp_path / "genes.parquet", h5ad=True)
    back = read_map(paths[0], ("gene",))
    np.testing.assert_allclose(back.features, built.genes.features)
    assert back.labels.tolist() == ["AAA", "BBB", "CCC"] and back.metadata["n_wells"].tolist() == [6, 6, 6]
    anndata = pytest.importorskip("anndata")
    adata = anndata.read_h5ad(paths[1])
    assert adata.shape == (3, 5) and adata.obs_names.tolist() == ["AAA", "BBB", "CCC"]
    guides = anndata.read_h5ad(write_map(built.guides, tmp_path / "guides.parquet", h5ad=True)[1])
    assert guides.shape == (6, 5) and guides.obs["gene"].tolist() == ["AAA", "AAA", "BBB", "BBB", "CCC", "CCC"]
    np.testing.assert_allclose(guides.X, built.guides.features.astype(np.float32))


def test_cli_writes_maps_table_and_pictures(tmp_path):
    wells = _wells(genes=("PIGA", "PIGC", "PIGH", "OR1A1", "OR2B6"), controls=4)
    write_well_embeddings(wells, tmp_path / "emb.parquet")
    assert maps_main([str(tmp_path / "emb.parquet"), str(tmp_path / "out"), "--sources", "SIGNOR", "CORUM",
                      "--null-genes", "OR1A1,OR2B6", "--null-size", "500", "--batch", "experiment_name", "plate",
                      "--coral-batch", "experiment_name", "--retrieval-batch", ""]) == 0
    out = tmp_path / "out"
    for name in ("benchmark.csv", "benchmark.json", "recall_bars.png", "run.json", "map_genes_tvn.parquet",
                 "map_guides_pca_cs.parquet"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "benchmark.csv")
    assert table["correction"].tolist() == ["none", "pca_cs", "tvn"]
    assert table["n_null_genes"].tolist() == [2, 2, 2] and (table["pairs_CORUM"] > 0).all()
    assert json.loads((out / "benchmark.json").read_text())[0]["correction"] == "none"


# ----------------------------------------------------------------------------------------------- the generator
def test_generator_writes_rxrx3_core_read_back_with_pyarrow_and_imagecodecs(tmp_path):
    out = rxrx3_maps.generate(tmp_path / "screen", size="23x17", complexes=2, genes_per_complex=3, null_genes=2,
                              guides=2, experiments=2, plates=1, controls=3, rows_per_shard=25, seed=5)
    meta = pd.read_csv(out / "metadata_rxrx3_core.csv")
    truth = json.loads((out / "synthetic_truth.json").read_text())
    genes = [g for members in truth["complexes"].values() for g in members] + truth["null_genes"]
    assert len(genes) == 8 and len(set(genes)) == 8
    assert len(meta) == 8 * 2 + 2 * 3  # every guide once on each experiment's single plate + 3 controls a plate
    assert set(meta.loc[meta["gene"] != "EMPTY_control", "treatment"]) == {f"{g}_guide_{k}" for g in genes
                                                                          for k in (1, 2)}
    # the complexes are real CORUM complexes; the null genes are in no annotation source
    clusters = dict(line.split("\t") for line in (annotation_dir() / "CORUM_clusters.tsv").read_text().splitlines())
    for name, members in truth["complexes"].items():
        assert set(members) <= set(clusters[name].split())
    for source in SOURCES:
        table = pd.read_csv(annotation_dir() / f"{source}.txt")
        assert not set(truth["null_genes"]) & (set(table["entity1"]) | set(table["entity2"]))
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert len(shards) == -(-len(meta) * 6 // 25)
    keys, images = [], []
    for shard in shards:
        table = pq.read_table(shard)
        keys += table.column("__key__").to_pylist()
        images += [imagecodecs.jpeg2k_decode(b) for b in table.column("jp2").combine_chunks().field("bytes")
                   .to_pylist()]
    assert len(keys) == len(meta) * 6
    wells = [re.sub(r"^(.+)/Plate(\d+)/(\w+)_s1_\d$", r"\1_\2_\3", k) for k in keys[::6]]
    assert wells == meta["well_id"].tolist()
    assert all(k.endswith(f"_s1_{i % 6 + 1}") for i, k in enumerate(keys))
    assert {im.shape for im in images} == {(17, 23)} and {im.dtype for im in images} == {np.dtype(np.uint8)}
    first = rxrx3_maps.render_well(meta.iloc[0], rxrx3_maps.Design(**{k: truth[k] for k in (
        "complexes", "null_genes", "experiment_of", "gene_effect", "penetrance", "guide_efficiency",
        "experiment_shift", "plate_shift", "gain", "background", "falloff")}), (17, 23), 5)
    np.testing.assert_array_equal(np.stack(images[:6]), first)  # lossless, channel order w1..w6


def test_generator_is_a_pure_function_of_its_arguments(tmp_path):
    kw = dict(size="19x13", complexes=1, genes_per_complex=3, null_genes=1, guides=1, experiments=1, plates=1,
              controls=2, seed=2)
    a = rxrx3_maps.generate(tmp_path / "a", **kw)
    b = rxrx3_maps.generate(tmp_path / "b", **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_generator_links_each_complex_in_the_sources_asked_for():
    """--linked-in SIGNOR: each screened complex holds a pair SIGNOR lists (random complexes hold few), so SIGNOR's
    recall is measurable; without it the pick is what it always was (the benchmark screens stay reproducible)."""
    directory = annotation_dir()
    signor = rxrx3_maps.known_pairs(directory, "SIGNOR")
    reactome = rxrx3_maps.known_pairs(directory, "Reactome")
    for seed in (2, 3):
        picked = rxrx3_maps.pick_complexes(6, 4, seed, directory, ("SIGNOR", "Reactome"))
        assert len(picked) == 6 and len({g for m in picked.values() for g in m}) == 24
        for members in picked.values():
            pairs = {frozenset((a, b)) for a in members for b in members if a < b}
            assert pairs & signor and pairs & reactome
    plain = rxrx3_maps.pick_complexes(6, 4, 3, directory)
    assert plain == rxrx3_maps.pick_complexes(6, 4, 3, directory, ())
    assert any(not {frozenset((a, b)) for a in m for b in m if a < b} & signor for m in plain.values())


def test_cellio_embeddings_join_the_metadata_on_their_id_code(tmp_path):
    """The main job's OUT/embeddings.parquet names a well `id_code` and carries its own `plate`, `experiment`...:
    joined on RxRx3-core's well_id, the table's columns win; an id the table lacks is named."""
    wells = _wells()
    frame = pd.DataFrame({"id_code": wells.metadata["well_id"], "plate": 99, "experiment": "x",
                          **{f"f{i}": wells.features[:, i] for i in range(5)}})
    frame.to_parquet(tmp_path / "cellio.parquet")
    wells.metadata.iloc[::-1].to_csv(tmp_path / "meta.csv", index=False)
    joined = read_well_embeddings(tmp_path / "cellio.parquet", tmp_path / "meta.csv", embeddings_id_col="id_code")
    assert joined.metadata["well_id"].tolist() == wells.metadata["well_id"].tolist()
    assert joined.metadata["plate"].tolist() == wells.metadata["plate"].tolist()  # the table's, not the 99s
    assert "experiment" in joined.metadata.columns and "id_code" not in joined.metadata.columns
    np.testing.assert_allclose(joined.features, wells.features)
    with pytest.raises(MapInputError, match="no 'well_id' column"):
        read_well_embeddings(tmp_path / "cellio.parquet", tmp_path / "meta.csv")
    wells.metadata.iloc[2:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(MapInputError, match=r"2 embedded well\(s\) have no metadata.*id_code"):
        read_well_embeddings(tmp_path / "cellio.parquet", tmp_path / "short.csv", embeddings_id_col="id_code")
    assert maps_main([str(tmp_path / "cellio.parquet"), str(tmp_path / "out"), "--metadata", str(tmp_path / "meta.csv"),
                      "--embeddings-id", "id_code", "--corrections", "pca_cs", "--sources", "CORUM",
                      "--null-size", "200", "--retrieval-batch", "", "--embed-dims", "auto"]) == 0
    assert pd.read_csv(tmp_path / "out" / "benchmark.csv")["n_features"].tolist() == [2]  # 9 controls // 4


def test_auto_embed_dims_keeps_four_control_wells_a_dimension():
    from trainer.maps.correct import CONTROLS_PER_DIM, auto_embed_dims

    wells = _wells(controls=6, features=12)  # 3 plates x 6 controls = 18 control wells
    assert CONTROLS_PER_DIM == 4 and auto_embed_dims(18) == 4 and auto_embed_dims(3) == 2
    assert correct(wells, "tvn", batch=("experiment_name", "plate"), embed_dims="auto").n_features == 4
    assert correct(wells, "none", embed_dims="auto").n_features == 4
    for bad in (0, "all", 2.5):
        with pytest.raises(MapInputError, match="embed_dims"):
            correct(wells, "pca_cs", embed_dims=bad)
    with pytest.raises(SystemExit):
        maps_main(["x.parquet", "out", "--embed-dims", "zero"])


def test_replicate_map_without_replicates_is_named():
    wells = _wells(plates=(("gene-001", 1),), guides=2)  # every guide on one plate: one well each
    with pytest.raises(MapInputError, match="replicate mAP: every treatment is in one well only"):
        replicate_map(wells)


def test_maps_summary_counts_beats_ties_and_trails_against_the_best_corrected_baseline(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import maps_summary

    cols = maps_summary.columns()
    rows = [dict(method="intensity", correction="none", **{c: 0.9 for c in cols}),  # uncorrected: not a rival
            dict(method="intensity", correction="tvn", **{c: 0.5 for c in cols}),
            dict(method="cp_measure", correction="pca_cs", **{c: 0.4 for c in cols}),
            dict(method="cellio", correction="tvn", **{c: 0.6 for c in cols})]
    rows[1][cols[0]], rows[3][cols[1]], rows[3][cols[2]] = 0.7, 0.5, 0.3  # one trail, one tie, one more trail
    pd.DataFrame(rows).to_csv(tmp_path / "benchmark.csv", index=False)
    out = maps_summary.summarise(tmp_path, "cellio", "tvn")
    assert (out["beats"], out["ties"], out["trails"]) == (len(cols) - 3, 1, 2)
    assert out[f"best_baseline_{cols[0]}"] == 0.7
    assert maps_summary.main([str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 0
    assert "cellio / tvn" in capsys.readouterr().out and len(pd.read_csv(tmp_path / "s.csv")) == 1
    with pytest.raises(SystemExit, match="no single cellio / pca_cs row"):
        maps_summary.summarise(tmp_path, "cellio", "pca_cs")


def test_maps_summary_names_trails_where_the_baseline_is_above_the_true_phenotypes(tmp_path):
    """A baseline above the screen's true phenotypes on a source recalls pairs by chance: such a trail is counted
    apart (`trails_beyond_truth`); a trail below the ceiling is not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import maps_summary

    cols = maps_summary.columns()
    recall = [c for c in cols if c.startswith("recall_")]
    rows = [dict(method="intensity", correction="tvn", **{c: 0.5 for c in cols}),
            dict(method="cellio", correction="tvn", **{c: 0.6 for c in cols}),
            dict(method="true_phenotypes", correction="none", **{c: 0.8 for c in recall})]
    rows[0][recall[0]], rows[2][recall[0]] = 0.7, 0.6    # trails; the baseline is above the ceiling
    rows[0][recall[1]] = 0.7                             # trails; the ceiling (0.8) is above the baseline
    pd.DataFrame(rows).to_csv(tmp_path / "benchmark.csv", index=False)
    out = maps_summary.summarise(tmp_path, "cellio", "tvn")
    assert (out["trails"], out["trails_beyond_truth"]) == (2, 1)
    assert out[f"true_phenotypes_{recall[0]}"] == 0.6 and "true_phenotypes_replicate_mAP" not in out
    pd.DataFrame(rows[:2]).to_csv(tmp_path / "benchmark.csv", index=False)
    assert np.isnan(maps_summary.summarise(tmp_path, "cellio", "tvn")["trails_beyond_truth"])


def test_maps_summary_scores_a_make_maps_table_against_another_tables_baselines(tmp_path):
    """`make maps` writes trainer.maps' benchmark.csv: one row per correction, no `method` column and no baselines;
    --against takes the baselines and the true phenotypes from the benchmark's table of the same screen."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import maps_summary

    cols = maps_summary.columns()
    recall = [c for c in cols if c.startswith("recall_")]
    bench, run = tmp_path / "bench", tmp_path / "run"
    bench.mkdir(), run.mkdir()
    pd.DataFrame([dict(method="intensity", correction="tvn", **{c: 0.5 for c in cols}),
                  dict(method="true_phenotypes", correction="none", **{c: 0.45 for c in recall})]
                 ).to_csv(bench / "benchmark.csv", index=False)
    pd.DataFrame([dict(correction="none", **{c: 0.4 for c in cols}),
                  dict(correction="centerscale", **{c: 0.6 for c in cols})]).to_csv(run / "benchmark.csv", index=False)
    out = maps_summary.summarise(run, "cellio", "centerscale", against=bench)
    assert (out["beats"], out["ties"], out["trails"]) == (len(cols), 0, 0)
    out = maps_summary.summarise(run, "cellio", "none", against=bench)
    assert (out["trails"], out["trails_beyond_truth"]) == (len(cols), len(recall))
    with pytest.raises(SystemExit, match="no corrected baseline rows"):
        maps_summary.summarise(run, "cellio", "none")
    assert maps_summary.main([str(run), str(run), "--against", str(bench), "--correction", "centerscale"]) == 0
    with pytest.raises(SystemExit):
        maps_summary.main([str(run), str(run), str(run), "--against", str(bench), str(bench)])


def test_true_phenotypes_row_scores_the_screens_own_gene_effects(tmp_path):
    """The ceiling row maps every gene of the screen to its true effect (null genes: zero) and scores it with the
    same recall as every method: its known pairs are those of the annotation tables among the screen's genes, and
    the true effects recall CORUM's pairs (each complex shares a direction) better than the same effects given to
    the wrong genes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import maps as bench_maps
    from trainer.maps import BenchmarkSpec

    data = rxrx3_maps.generate(tmp_path / "screen", size="11x9", complexes=5, genes_per_complex=3, null_genes=2,
                               guides=1, experiments=2, plates=1, controls=2, seed=3)
    truth = json.loads((data / "synthetic_truth.json").read_text())
    spec = BenchmarkSpec(sources=("CORUM",))
    row = bench_maps.true_phenotypes_row(data, truth, spec)
    genes = {g for members in truth["complexes"].values() for g in members} | set(truth["null_genes"])
    corum = relationships("CORUM")
    inside = corum["entity1"].isin(genes) & corum["entity2"].isin(genes)
    assert row["method"] == "true_phenotypes" and row["n_genes"] == 17 and row["n_features"] == len(truth["axes"])
    assert row["pairs_CORUM"] == int(inside.sum()) > 0
    complex_of = {g: name for name, members in truth["complexes"].items() for g in members}
    same = corum.loc[inside, "entity1"].map(complex_of) == corum.loc[inside, "entity2"].map(complex_of)
    assert row["linked_pairs_CORUM"] == int(same.sum()) > 0
    shuffled = dict(truth, gene_effect=dict(zip(sorted(truth["gene_effect"]),
                                                list(truth["gene_effect"].values())[::-1])))
    wrong = bench_maps.true_phenotypes_row(data, shuffled, spec)
    assert row["recall_CORUM_0.1_0.9"] > wrong["recall_CORUM_0.1_0.9"]
