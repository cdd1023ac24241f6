"""The main job, end to end: synth (or a given RxRx1 directory) -> metadata -> ingest -> inspect -> one loader
epoch -> train the 6-channel model and the two-stage per-channel + fusion plan -> predict (TTA views) on
the held-out experiments and the test set -> aggregate / stacker / ensemble / plate assignment ->
OUT/submission.csv and OUT/report.json (+ plots).

    python -m trainer.demo --out out/demo                      # on an embedded synthetic RxRx1 set
    python -m trainer.demo --data /path/to/rxrx1 --out out/rx  # on a directory in the Kaggle layout

Every step is resumable: rerunning the command skips what is complete (synth marker, ingest journal, training
checkpoints, prediction files). `make demo DATA=... OUT=...` calls this.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cellio

from trainer.config import load_config

log = logging.getLogger("trainer.demo")

RECIPES = Path(__file__).resolve().parent / "recipes"
SYNTH_MARKER = ".cellio-synth.json"

# Sizes of the embedded synthetic set and of the CPU recipes. "quick" is the test suite's end-to-end check.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {"classes": 40, "size": 256, "train_experiments": 2, "test_experiments": 1, "crop": 96,
                "sixch_epochs": 12, "stage1_epochs": 4, "stage2_epochs": 30, "batch": 32, "tta": "grid9"},
    "quick": {"classes": 8, "size": 48, "train_experiments": 2, "test_experiments": 1, "crop": 24,
              "sixch_epochs": 2, "stage1_epochs": 1, "stage2_epochs": 3, "batch": 16, "tta": "grid9"},
}


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def make_data(args: argparse.Namespace, prof: dict[str, Any], out: Path) -> Path:
    """The RxRx1 directory to use: the given one, or the embedded synthetic set (made once, then reused)."""
    if args.data:
        raw = Path(args.data).resolve()
        if not raw.is_dir():
            raise cellio.CellioError(f"--data {raw}: no such directory (expected an RxRx1 directory in the Kaggle "
                                     "layout: train.csv, test.csv, train/, test/ ...)")
        print(f"   using {raw}")
        return raw
    raw = out / "raw"
    marker = raw / SYNTH_MARKER
    params = {"classes": prof["classes"], "train_experiments_per_cell_type": prof["train_experiments"],
              "test_experiments_per_cell_type": prof["test_experiments"], "size": prof["size"], "seed": args.seed}
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        print(f"   synthetic set already at {raw}")
        return raw
    summary = cellio.synthesize(raw, workers=args.workers, **params)
    marker.write_text(json.dumps({"params": params, "summary": _jsonable(summary)}, indent=2))
    print(f"   synthetic RxRx1 -> {raw}: {summary.get('sites')} sites, {summary.get('sites_per_s', 0):.1f} sites/s")
    check = summary.get("classifier")
    if check:
        print(f"   class from per-channel mean/std alone: {check['pixel_stats_accuracy']:.3f} accuracy vs chance "
              f"{check['chance']:.3f}; from texture features: {check['texture_accuracy']:.3f}")
    return raw


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def summarize_metadata(raw: Path) -> Any:
    sites = cellio.read_metadata(raw)
    groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
    counts = sites.groupby(["dataset", "cell_type"]).size().unstack(fill_value=0)
    print(counts.to_string())
    wells = sites.drop_duplicates("id_code")
    print(f"   {len(sites)} sites in {len(wells)} wells; well types: "
          f"{wells['well_type'].value_counts().to_dict()}; "
          f"{wells.loc[wells['well_type'] == 'treatment', 'sirna'].nunique()} labelled treatment classes")
    print(f"   plate groups: {[len(g) for g in groups.groups]} siRNAs; train rotations: {dict(groups.rotations)}")
    return sites


def loader_epoch(store: Any, prof: dict[str, Any]) -> None:
    loader = cellio.create_loader(store, batch_size=64, crop_size=prof["crop"], train=True, seed=0)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += int(batch["image"].shape[0])
    dt = time.perf_counter() - t0
    shape = tuple(batch["image"].shape)
    print(f"   one training epoch ({type(loader).__name__}, backend {getattr(loader, 'backend', '?')}): {n} sites "
          f"in {dt:.2f} s = {n / dt:.0f} sites/s; batch image {shape} {batch['image'].dtype}")


def train_models(store_path: Path, out: Path, prof: dict[str, Any], args: argparse.Namespace) -> list[Path]:
    """The 6-channel model and the per-channel extractors + fusion head; returns their checkpoints."""
    from trainer.train import run

    common = [f"data.store={store_path}", f"data.crop_size={prof['crop']}", f"data.batch_size={prof['batch']}",
              f"train.seed={args.seed}", "train.progress=true"]
    sixch = out / "runs" / "sixch"
    cfg = load_config(RECIPES / "demo_cpu.yaml", common + [f"out={sixch}", f"optim.epochs={prof['sixch_epochs']}"])
    print(f"   6-channel {cfg.model.name} -> {sixch}")
    m6 = run(cfg)
    _print_metrics("6-channel", m6)

    s1, s2 = out / "runs" / "perchannel_s1", out / "runs" / "perchannel_s2"
    cfg1 = load_config(RECIPES / "fusion_cpu.yaml", common + [f"out={s1}", f"optim.epochs={prof['stage1_epochs']}"])
    print(f"   per-channel extractors (stage 1) {cfg1.model.name} -> {s1}")
    _print_metrics("per-channel stage 1", run(cfg1))
    cfg2 = load_config(RECIPES / "fusion_cpu.yaml",
                       common + [f"out={s2}", "train.stage=fusion_stage2", f"train.init_from={s1 / 'checkpoints' / 'last.pt'}",
                                 f"optim.epochs={prof['stage2_epochs']}", "optim.lr=1e-3"])
    print(f"   fusion head on frozen per-channel features (stage 2) -> {s2}")
    _print_metrics("per-channel + fusion", run(cfg2))
    return [sixch / "checkpoints" / "last.pt", s2 / "checkpoints" / "last.pt"]


def _print_metrics(name: str, metrics: dict[str, Any]) -> None:
    keys = [k for k in metrics if "acc" in k]
    shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics[k], float))
    print(f"   {name}: {shown}")


def predict_all(ckpts: Sequence[Path], store: Any, out: Path, prof: dict[str, Any]) -> tuple[list[str], list[str]]:
    from trainer.predict import predict

    val_files, test_files = [], []
    for ckpt in ckpts:
        name = ckpt.parent.parent.name
        for ds, files in (("validation", val_files), ("test", test_files)):
            path = out / "predictions" / f"{name}_{ds}.npz"
            if not path.is_file():
                preds = predict(ckpt, store, datasets=ds, tta=prof["tta"], out=path)
                rate = len(preds) / max(preds.meta.get("seconds", 0.0), 1e-9)
                print(f"   {name} {ds}: {len(preds)} views ({prof['tta']}) at {rate:.0f} views/s -> {path}")
            files.append(str(path))
    return val_files, test_files


def sample_submission(raw: Path, out: Path) -> Path:
    """Kaggle's sample_submission.csv, or (for a directory without one) the same file made from test.csv's rows."""
    given = raw / "sample_submission.csv"
    if given.is_file():
        return given
    import pandas as pd

    made = out / "sample_submission.csv"
    test = pd.read_csv(raw / "test.csv", usecols=["id_code"])
    test.assign(sirna=0).to_csv(made, index=False)
    print(f"   {given} is missing: the submission follows test.csv's rows ({made})")
    return made


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="an RxRx1 directory in the Kaggle layout (default: make a synthetic one in OUT/raw)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help="sizes (quick = the test suite's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes for synth and ingest (default: all cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    t = _step("1. data")
    raw = make_data(args, prof, out)
    _done(t)
    t = _step("2. metadata")
    summarize_metadata(raw)
    _done(t)
    t = _step("3. ingest")
    store_path = out / "store.zarr"
    report = cellio.ingest(raw, store_path, workers=args.workers)
    print(f"   {report.n_ok} of {report.n_sites} sites stored ({report.n_written} written by this run, "
          f"{report.n_failed} failed) in {report.seconds:.1f} s; codec {report.codec}, {report.workers} workers")
    subprocess.run([sys.executable, "-m", "cellio", "inspect", str(store_path)], check=True)
    _done(t)
    store = cellio.open_store(store_path)
    t = _step("4. loader")
    loader_epoch(store, prof)
    _done(t)
    t = _step("5. train")
    ckpts = train_models(store_path, out, prof, args)
    _done(t)
    t = _step("6. predict")
    val_files, test_files = predict_all(ckpts, store, out, prof)
    _done(t)
    t = _step("7. aggregate, stack, ensemble, plate assignment, submission")
    from trainer.chain import ChainInputs, run_chain
    from trainer.predict import load_predictions
    from trainer.report import format_table

    truth = raw / "test_truth.csv"
    result = run_chain(ChainInputs(store.sites, [load_predictions(f) for f in val_files],
                                   [load_predictions(f) for f in test_files], seed=args.seed,
                                   sample_submission=sample_submission(raw, out),
                                   test_truth=truth if truth.is_file() else None), out)
    print(f"submission ({result.submitted}) -> {out / 'submission.csv'}")
    print(format_table(result.reports))
    _done(t)
    print(f"\nmain job done in {time.perf_counter() - start:.0f} s")
    for name in ("submission.csv", "report.json", "steps.png", "cell_types.png"):
        path = out / name
        print(f"   {name:<15} {path if path.exists() else '(not written)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
