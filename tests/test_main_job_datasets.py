"""The main job (`python -m trainer.demo --data DIR`) on the data sets that name their labels, from each format's
own generator (tests/formats): recognised without --dataset, the perturbation classifier trained on class names
(RxRx3-core's genes and compounds at a concentration, RxRx2's soluble factors at a concentration), held-out
accuracy per perturbation type, and the embeddings trainer.maps reads. Tiny: a few steps on 16 px crops."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "formats"))

TINY_JOB = ["--hardware", "cpu", "--workers", "1", "plan.crop=16", "plan.batch=8", "plan.steps_single=8",
            "plan.steps_pseudo=0", "plan.eval_tta=center", "plan.embed_tta=center"]


def _rxrx3_core(root: Path) -> Path:
    """RxRx3-core's format: three gene experiments and two compound experiments (each compound at the 8
    concentrations), one plate each, 33 x 27 images."""
    from cells import parse_size
    from rxrx3_core import default_images, default_metadata, write_rxrx3_core

    genes = default_metadata(genes=3, guides=2, compounds=2, plates=1, gene_experiments=3, seed=0)
    more = default_metadata(genes=3, guides=2, compounds=2, plates=1, gene_experiments=0, seed=1)
    more = more.assign(experiment_name="compound-002",
                       well_id="compound-002_" + more["plate"].astype(str) + "_" + more["address"])
    meta = pd.concat([genes, more], ignore_index=True).sort_values(["experiment_name", "plate", "address"])
    write_rxrx3_core(root, meta.reset_index(drop=True), default_images(parse_size("33x27"), 0, 1.0),
                     rows_per_shard=200)
    return root


def _check_embeddings(out: Path, n_wells: int, label: str) -> pd.DataFrame:
    from trainer.maps.files import read_well_embeddings

    emb = pd.read_parquet(out / "embeddings.parquet")
    assert len(emb) == emb["id_code"].nunique() == n_wells  # every well once
    loaded = read_well_embeddings(out / "embeddings.parquet")
    assert loaded.features.shape == (n_wells, emb.filter(regex=r"^f\d+$").shape[1])
    assert np.isfinite(loaded.features).all() and emb[label].map(type).eq(str).all()
    return emb


def _check_checkpoint_and_loader(out: Path, columns: tuple[str, ...]) -> None:
    """The checkpoint names its classes; the loader the job trained with yields each site's id in that vocabulary."""
    import cellio
    from trainer.training.checkpoint import load_for_inference
    from trainer.training.data import make_loader
    from trainer.training.runtime import Env

    _, cfg, class_map = load_for_inference(out / "runs" / "single" / "checkpoints" / "last.pt")
    assert class_map.names is not None and class_map.columns == columns
    store = cellio.open_store(out / "store.zarr")
    import torch

    loader = make_loader(cfg, store, Env(0, 1, 0, torch.device("cpu")), None, train=False,
                         class_map=class_map)
    batch = next(iter(loader))
    expected = class_map.row_ids(store.sites)[batch["index"].numpy()]
    assert (batch["label"].numpy() == expected).all() and (expected >= 0).any()


def test_the_main_job_on_rxrx3_core_names_genes_and_compounds_at_a_concentration(tmp_path):
    from trainer.demo import main

    raw = _rxrx3_core(tmp_path / "rxrx3-core")
    out = tmp_path / "out"
    assert main(["--data", str(raw), "--out", str(out), *TINY_JOB]) == 0  # no --dataset: recognised
    report = json.loads((out / "report.json").read_text())
    held = report["held_out"]
    assert report["dataset"] == "rxrx3-core" and not (out / "submission.csv").exists()
    wells = pd.read_csv(out / "held_out_predictions.csv", keep_default_na=False)
    assert held["n_wells"] == len(wells) > 0
    assert sorted(wells["experiment"].unique()) == held["experiments"]
    # the label of a well is its gene, its compound at its concentration, or its control's name
    compound = wells["perturbation_type"].eq("COMPOUND") & wells["well_type"].eq("treatment")
    expected = np.where(compound, wells["treatment"] + " @ " + wells["concentration"].astype(str).str.replace(
        r"\.0$", "", regex=True), np.where(wells["well_type"] == "treatment", wells["gene"], wells["treatment"]))
    assert wells["label"].tolist() == expected.tolist()
    from trainer.infer.predict import load_predictions

    names = load_predictions(out / "predictions" / "held_out.npz").meta["class_names"]
    assert set(wells["predicted"]) <= set(names) and set(wells["label"]) <= set(names)
    # accuracy per perturbation type: the well types, and among treatments CRISPR / COMPOUND and each dose
    for well_type, g in wells.groupby("well_type"):
        assert held["per_perturbation_type"][well_type] == {
            "accuracy": pytest.approx((g.label == g.predicted).mean()), "n": len(g)}
    by_kind = held["per_column"]["perturbation_type"]
    assert set(by_kind) == set(wells.loc[wells.well_type == "treatment", "perturbation_type"])
    assert sum(v["n"] for v in held["per_column"]["concentration"].values()) == int((wells.well_type ==
                                                                                    "treatment").sum())
    _check_checkpoint_and_loader(out, ("perturbation", "concentration"))
    emb = _check_embeddings(out, 96, "perturbation")
    assert set(emb["perturbation_type"]) == {"CRISPR", "COMPOUND"}


def test_the_main_job_on_rxrx2_names_soluble_factors_at_a_concentration(tmp_path):
    import rxrx2

    from trainer.demo import main

    raw = rxrx2.generate(tmp_path / "rxrx2", size="29x25", experiments=3, plates=1, factors=3, concentrations=2,
                         replicates=2, controls=3, sites=2)
    out = tmp_path / "out"
    assert main(["--data", str(raw), "--out", str(out), *TINY_JOB]) == 0
    report = json.loads((out / "report.json").read_text())
    held = report["held_out"]
    assert report["dataset"] == "rxrx2"
    wells = pd.read_csv(out / "held_out_predictions.csv", keep_default_na=False)
    assert set(held["per_perturbation_type"]) == set(wells["well_type"]) == {"treatment", "untreated"}
    treated = wells[wells.well_type == "treatment"]
    assert treated["label"].str.fullmatch(r".+ @ 0\.(0001|1)").all() and (wells.loc[wells.well_type == "untreated",
                                                                                   "label"] == "").all()
    assert set(held["per_column"]["treatment_conc"]) == {"0.0001", "0.1"}
    _check_checkpoint_and_loader(out, ("treatment", "treatment_conc"))
    _check_embeddings(out, 45, "treatment")


def test_a_directory_no_data_set_recognises_is_named_before_any_work(tmp_path, capsys):
    from trainer.demo import main

    raw = tmp_path / "unknown"
    raw.mkdir()
    (raw / "images.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    assert main(["--data", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--data {raw}: not recognised" in err and "--dataset NAME" in err, err
    for name in ("rxrx1", "rxrx2", "rxrx3-core", "jump", "ome-zarr"):
        assert f"{name}: " in err
    assert not (out / "store.zarr").exists()


def test_the_main_job_on_jump_reads_uint16_five_channel_sites_and_the_consortium_labels(tmp_path):
    # --metadata: JUMP's labels (Metadata_JCP2022) live in the consortium's tables, joined at the ingest
    import cellio
    import jump

    from trainer.demo import main

    raw = jump.write_jump(tmp_path / "jump", plates=4, size="37x23", wells=6, fields=2, brightfield=False)
    out = tmp_path / "out"
    job = [a for a in TINY_JOB if not a.startswith("plan.steps_single")] + ["plan.steps_single=4"]
    assert main(["--data", str(raw / "cpg0016-jump"), "--metadata", str(raw / "metadata"), "--out", str(out),
                 *job]) == 0
    store = cellio.open_store(out / "store.zarr")
    assert store.layout.name == "jump" and store.dtype == np.uint16 and store.image_shape == (23, 37, 5)
    held = json.loads((out / "report.json").read_text())["held_out"]
    wells = pd.read_csv(out / "held_out_predictions.csv", keep_default_na=False)
    assert wells["label"].str.fullmatch(r"JCP2022_\d{6}").all() and held["n_wells"] == len(wells)
    # a perturbation only the held-out batch screens (its CRISPR or ORF plate) cannot be named: not scored
    sites = store.sites.drop_duplicates("id_code")
    val = sites["experiment"].isin(held["experiments"])
    unseen = ~sites.loc[val, "jcp2022"].isin(set(sites.loc[~val, "jcp2022"]))
    assert held["not_scored"]["class_not_trained"] == int(unseen.sum()) > 0
    assert len(wells) == int((~unseen).sum())
    _check_checkpoint_and_loader(out, ("jcp2022",))
    _check_embeddings(out, 24, "jcp2022")


def test_the_main_job_on_an_ome_zarr_plate_trains_on_every_well_and_embeds_them(tmp_path):
    # one plate is one experiment: nothing can be held out whole, so the plan trains on every well (val_fold=-1)
    import cellio
    from ome_zarr_plate import write_ome_zarr_plate

    from trainer.demo import main

    plate = write_ome_zarr_plate(tmp_path / "raw", version="0.4", dtype="uint16", size="37x23", rows=3, columns=5,
                                 fields=2, levels=1)
    out = tmp_path / "out"
    job = [a for a in TINY_JOB if not a.startswith("plan.steps_single")] + ["plan.steps_single=4"]
    assert main(["--data", str(plate), "--metadata", str(plate.parent / "plate1.perturbations.csv"),
                 "--out", str(out), *job]) == 0
    store = cellio.open_store(out / "store.zarr")
    assert store.layout.name == "ome-zarr" and store.dtype == np.uint16 and store.image_shape == (23, 37, 5)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["n_folds"] == 1 and plan["val_fold"] == -1
    assert json.loads((out / "report.json").read_text())["held_out"]["skipped"]
    assert not (out / "held_out_predictions.csv").exists()
    emb = _check_embeddings(out, 14, "perturbation")  # 3 x 5 wells, the last position left empty
    assert set(emb["perturbation"]) >= {"DMSO"}


def test_make_maps_goes_from_a_layout_directory_to_the_benchmarked_map(tmp_path):
    """`make maps DATA=DIR`: the main job on every experiment of a knockout screen in RxRx3-core's layout (the maps
    generator's own code), its embeddings at the map layer, then trainer.maps joined with the screen's metadata —
    the recipe the Makefile holds, run as make prints it (the virtualenv's stamp taken as made)."""
    import shutil
    import subprocess

    from rxrx3_maps import generate

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    root = Path(__file__).resolve().parents[1]
    data = generate(tmp_path / "screen", size="48", complexes=4, genes_per_complex=3, null_genes=2, guides=2,
                    experiments=2, plates=2, controls=4, rows_per_shard=40)
    truth = json.loads((data / "synthetic_truth.json").read_text())
    out = tmp_path / "maps"
    plan = " ".join(a for a in TINY_JOB if a != "plan.steps_pseudo=0")
    args = ["make", "-s", "-C", str(root), "-o", ".venv/.installed", "maps", f"PY={sys.executable}",
            f"DATA={data}", f"OUT={out}", f"PLAN={plan}",
            f"MAPS_ARGS=--sources CORUM --null-size 100 --null-genes {','.join(truth['null_genes'])}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    table = pd.read_csv(out / "maps" / "benchmark.csv")
    assert table["correction"].tolist() == ["none", "centerscale", "pca_cs", "tvn"]
    assert (table["n_features"] == 16 // 4).all()  # --embed-dims auto: 2 experiments x 2 plates x 4 controls / 4
    assert (table["n_genes"] == 14).all() and (table["pairs_CORUM"] == 12).all()
    assert (out / "maps" / "map_genes_tvn.parquet").is_file() and (out / "maps" / "recall_bars.png").is_file()
    emb = pd.read_parquet(out / "embeddings.parquet")
    assert sum(c.startswith("f") and c[1:].isdigit() for c in emb.columns) == 92  # densenet_tiny's final layer
    plan = json.loads((out / "plan.json").read_text())  # each gene in one of the 2 experiments: trained within them
    assert plan["within"] == "experiment" and plan["data"]["experiments_per_class"] == 0.5
    assert subprocess.run(["make", "-s", "-C", str(root), "-o", ".venv/.installed", "maps"], capture_output=True,
                          text=True).returncode == 2
