"""The main job's steps, in order (`run_job`), and what each step does: the command is `python -m trainer.demo`
(trainer/demo.py says what the job does, end to end).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cellio

from trainer.train.config import Config, load_config, parse_override, save_config
from trainer.job.plan import (STEP_QUANTUM, DataFacts, Hardware, Plan, check_budget, fit_to_budget, load_plan,
                          make_plan, parse_overrides, save_plan)

log = logging.getLogger(__name__)

SYNTH_MARKER = ".cellio-synth.json"
FINETUNE_LR = 0.5               # a cell type's fine-tuning run starts at this fraction of the plan's lr
REFIT_LR = 0.5                  # the refit on every train experiment restarts at this fraction of the plan's lr
DEFAULT_BUDGET_MIN = 14.0
HARDWARE = ("auto", "cpu", "gpu")

# The embedded synthetic set ("default": subtle, cell-type-specific phenotypes at 512 px, ~1,700 sites) and the
# test suite's tiny one ("quick").
PROFILES: dict[str, dict[str, Any]] = {
    "default": {"classes": 60, "size": 512, "train_experiments_per_cell_type": 2,
                "test_experiments_per_cell_type": 1, "profile": "hard"},
    "quick": {"classes": 8, "size": 48, "train_experiments_per_cell_type": 2, "test_experiments_per_cell_type": 1,
              "profile": "default"},
}


@dataclass
class JobOptions:
    out: Path
    data: Path | None = None          # None: the embedded synthetic set in OUT/raw
    profile: str = "default"
    budget_min: float = DEFAULT_BUDGET_MIN
    seed: int = 0
    workers: int | None = None        # synth and ingest processes
    recipe: Path | None = None        # trainer YAML under the plan's own keys
    overrides: list[str] = field(default_factory=list)       # trainer keys, for every run
    plan_overrides: dict[str, Any] = field(default_factory=dict)  # plan.<field>=value
    hardware: str = "auto"            # auto | cpu | gpu (gpu on a CPU machine: the GPU plan's code path)
    meter: Any = None                 # name -> context manager around each step (trainer.job.meter.StepMeter)


def check_job(opts: JobOptions) -> None:
    """Everything the command line asks for, checked before any work (on the real data the ingest takes hours, so
    a typo must not wait for step 4): the budget, every plan override (type and range), the recipe and every
    trainer key (through the trainer's own config check), the model names, the profile and the hardware choice.
    The plan overrides are replaced by their typed values."""
    check_budget(opts.budget_min * 60)
    if opts.profile not in PROFILES:
        raise cellio.ConfigError(f"--profile: expected one of {sorted(PROFILES)}, found {opts.profile!r}")
    if opts.hardware not in HARDWARE:
        raise cellio.ConfigError(f"--hardware: expected one of {list(HARDWARE)}, found {opts.hardware!r}")
    if opts.workers is not None and (type(opts.workers) is not int or opts.workers < 1):  # as cellio words it
        raise cellio.ConfigError(f"--workers: expected an integer >= 1 or None, found {opts.workers!r}")
    opts.plan_overrides = parse_overrides(opts.plan_overrides)
    from trainer.train.models import check_model_name

    # the recipe and the user's trainer keys as every training run will read them (the plan's own keys, set
    # between the two, are checked by parse_overrides above)
    cfg = load_config(opts.recipe, [f"train.seed={opts.seed}", *opts.overrides, f"out={opts.out}"])
    check_model_name(cfg.model.name)


def _meter(opts: JobOptions) -> Any:
    from trainer.infer.chain import no_meter

    return opts.meter or no_meter


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def make_data(opts: JobOptions) -> Path:
    """The RxRx1 directory to use: the given one, or the embedded synthetic set (made once, then reused)."""
    if opts.data:
        raw = Path(opts.data).resolve()
        if not raw.is_dir():
            raise cellio.CellioError(f"--data {raw}: no such directory (expected an RxRx1 directory in the Kaggle "
                                     "layout: train.csv, test.csv, train/, test/ ...)")
        print(f"   using {raw}")
        return raw
    raw = opts.out / "raw"
    marker = raw / SYNTH_MARKER
    params = {**PROFILES[opts.profile], "seed": opts.seed}
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        print(f"   synthetic set already at {raw}")
        return raw
    summary = cellio.synthesize(raw, workers=opts.workers, **params)
    marker.write_text(json.dumps({"params": params, "summary": json.loads(json.dumps(summary, default=str))},
                                 indent=2))
    print(f"   synthetic RxRx1 -> {raw}: {summary.get('sites')} sites, {summary.get('sites_per_s', 0):.1f} sites/s")
    return raw


def summarize_metadata(raw: Path) -> None:
    sites = cellio.read_metadata(raw)
    groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
    print(sites.groupby(["dataset", "cell_type"]).size().unstack(fill_value=0).to_string())
    wells = sites.drop_duplicates("id_code")
    print(f"   {len(sites)} sites in {len(wells)} wells; well types: {wells['well_type'].value_counts().to_dict()}; "
          f"{wells.loc[wells['well_type'] == 'treatment', 'sirna'].nunique()} labelled treatment classes")
    print(f"   plate groups: {[len(g) for g in groups.groups]} siRNAs; train rotations: {dict(groups.rotations)}")


def ingest(raw: Path, opts: JobOptions) -> Path:
    store_path = opts.out / "store.zarr"
    report = cellio.ingest(raw, store_path, workers=opts.workers)
    print(f"   {report.n_ok} of {report.n_sites} sites stored ({report.n_written} written by this run, "
          f"{report.n_failed} failed) in {report.seconds:.1f} s; codec {report.codec}, {report.workers} workers")
    subprocess.run([sys.executable, "-m", "cellio", "inspect", str(store_path)], check=True)
    return store_path


# ------------------------------------------------------------------------------------------------------- the plan
def run_config(plan: Plan, opts: JobOptions, store_path: Path, out: Path, *extra: str) -> Config:
    """A training run's config: the recipe (if any), the plan's keys, the user's overrides, then `extra`."""
    keys = [f"data.store={store_path}", f"train.seed={opts.seed}", "train.progress=true", "train.tensorboard=false",
            *plan.trainer_overrides()]
    return load_config(opts.recipe, [*keys, *opts.overrides, f"out={out}", *extra])


def measure(plan: Plan, opts: JobOptions, store: Any, store_path: Path) -> tuple[float, float]:
    """(seconds per training step, seconds per predicted view) of this plan on this machine: a few real steps of
    the single stage (trainer.train in-process), then a few batches of prediction."""
    import numpy as np

    from trainer.train.checkpoint import load_for_inference
    from trainer.infer.predict import predict_views
    from trainer.train.loop import run

    calib = opts.out / "runs" / "calibration"
    # a scratch run: an earlier attempt's log.jsonl would otherwise be appended to and its times read as ours
    shutil.rmtree(calib, ignore_errors=True)
    warm, timed = 2, 6
    cfg = run_config(plan, opts, store_path, calib, f"train.max_steps={warm + timed}", "train.log_every=1",
                     "train.progress=false", "train.resume=false", "train.device=" + _device(plan))
    run(cfg)
    times = [e["time"] for e in map(json.loads, (calib / "log.jsonl").read_text().splitlines())
             if e["event"] == "train"]
    # the median step: one slow step of six (a log flush, another process waking) would otherwise cost the whole
    # run its share of steps (foreign subtle set: one 1.30 s step among 0.75-0.83 s ones made the mean 0.91 s)
    step_s = float(np.median(np.diff(times[warm - 1:])))
    model, mcfg, class_map = load_for_inference(calib / "checkpoints" / "last.pt", _device(plan))
    test_rows = store.sites.index[store.sites["dataset"] == "test"][:48].to_numpy()
    t0 = time.perf_counter()
    preds = predict_views(model, mcfg, class_map, store, datasets=None, indices=test_rows, tta="center",
                          batch_size=plan.batch, progress=False)
    view_s = (time.perf_counter() - t0) / max(len(preds), 1)
    return step_s, view_s


def _device(plan: Plan) -> str:
    import torch

    return "cuda" if plan.device == "cuda" and torch.cuda.is_available() else "cpu"


def make_job_plan(opts: JobOptions, store: Any, store_path: Path, start: float) -> Plan:
    """OUT/plan.json when it exists (a rerun), else a new plan fitted to the budget by measurement."""
    path = opts.out / "plan.json"
    if path.is_file():
        plan = load_plan(path)
        print(f"   plan from {path} (delete it to plan again)")
        return plan
    overrides = parse_overrides(opts.plan_overrides)
    facts = DataFacts.from_store(store)
    hw = Hardware.detect()
    if opts.hardware == "cpu":
        hw = Hardware(hw.cpu_cores, (), hw.dali)
    elif opts.hardware == "gpu" and not hw.gpus:  # the GPU plan's code path on a CPU machine (tests)
        n = overrides.get("processes", 1)
        hw = Hardware(hw.cpu_cores, tuple(("(forced) cpu", 0.0) for _ in range(n)), hw.dali)
    plan = make_plan(facts, hw, opts.budget_min * 60, overrides)
    if plan.device == "cuda" and not _has_cuda():
        plan.device = "cpu"
    check_batch(plan, opts, store, store_path)  # before the budget's measurement trains
    if {"steps_single", "steps_pseudo"} <= set(opts.plan_overrides):  # nothing to measure
        plan.reasons.append("steps given as plan overrides: no measurement, no budget check")
    else:
        step_s, view_s = measure(plan, opts, store, store_path)
        plan = fit_to_budget(plan, step_s=step_s, view_s=view_s, spent_s=time.perf_counter() - start, facts=facts)
    save_plan(plan, path)
    return plan


def check_batch(plan: Plan, opts: JobOptions, store: Any, store_path: Path) -> None:
    """plan.batch against the training sites of each run the plan trains with it (the single stage; each cell
    type's fine-tuning), one batch per process: a ConfigError naming plan.batch, not the loader's own words
    (last_batch, batch_size) from inside the first training run. Plate-pure batches (plan.batch_by) are checked by
    the loader per plate."""
    from trainer.train.data import count_train_sites
    from trainer.train.folds import split_experiments

    cfg = run_config(plan, opts, store_path, opts.out / "runs" / "single")
    if cfg.data.batch_by:
        return
    split = split_experiments(cfg.data, store.sites)
    runs = [("the single stage", cfg)]
    if plan.steps_finetune > 0:
        trained = store.sites[store.sites["experiment"].isin(split.train)]
        runs += [(f"the fine-tuning of {ct}", run_config(plan, opts, store_path, opts.out / "runs" / f"finetune_{ct}",
                                                         f"data.cell_types=[{ct}]"))
                 for ct in sorted(trained["cell_type"].unique())]
    for what, run_cfg in runs:
        n, batch = count_train_sites(run_cfg, store.sites, split.train), run_cfg.data.batch_size
        if n < batch * plan.processes:
            key = "plan.batch" if batch == plan.batch else "data.batch_size"  # a trainer key given on top wins
            per = "" if plan.processes == 1 else f" on each of {plan.processes} processes"
            raise cellio.ConfigError(
                f"{key}={batch}: {what} trains on {n} sites (train experiments {split.train}), fewer than one "
                f"batch of {batch}{per}; set {key} to at most {max(n // plan.processes, 1)}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------- training
def train(cfg: Config, plan: Plan) -> dict[str, Any]:
    """One training run: in this process, or under torchrun with one process per GPU (plan.processes > 1)."""
    from trainer.infer.pseudo import label_wells
    from trainer.train.loop import run

    if plan.processes <= 1:
        return run(cfg, labeller=label_wells)
    requested = save_config(cfg, Path(cfg.out) / "requested.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    if plan.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(plan.processes),
           "-m", "trainer.train", "--config", str(requested)]
    print(f"   torchrun: {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, env=env, check=True)
    return json.loads((Path(cfg.out) / "final_metrics.json").read_text())


def train_models(plan: Plan, opts: JobOptions, store_path: Path,
                 start: float) -> tuple[Path, Path, dict[str, Any]]:
    """The single stage, then the pseudo-label stage from it, then the refit on every train experiment; (the model
    that scores the held-out fold, the model that scores test, metrics of every stage). Without a refit both are
    the last joint model. `start`: when the job started (the refit is sized to the time left)."""
    if plan.steps_refit > 0 and plan.steps_finetune > 0:  # steps given as overrides skip fit_to_budget's check
        raise cellio.ConfigError(f"plan.steps_refit={plan.steps_refit} with plan.steps_finetune={plan.steps_finetune}:"
                                 " the refit and per-cell-type fine-tuning do not combine; set one of them to 0")
    single = opts.out / "runs" / "single"
    with _meter(opts)("train: single stage"):
        m1 = train(run_config(plan, opts, store_path, single, f"train.max_steps={plan.steps_single}"), plan)
    _print_metrics("6-channel model", m1)
    metrics = {"single": _scalars(m1)}
    final = single / "checkpoints" / "last.pt"
    if plan.steps_pseudo > 0:
        pseudo = opts.out / "runs" / "pseudo"
        with _meter(opts)("train: pseudo-label stage"):
            m2 = train(run_config(plan, opts, store_path, pseudo, "train.stage=pseudo_label",
                                  f"train.init_from={final}", f"train.max_steps={plan.steps_pseudo}"), plan)
        for r in m2.get("pseudo_rounds", []):
            print(f"   pseudo-label round {r['round']}: {r['pseudo_labels']} wells, held-out precision "
                  f"{r['validation_precision']:.3f}")
        _print_metrics("6-channel model + pseudo-labels", m2)
        metrics["pseudo"] = {**_scalars(m2), "rounds": m2.get("pseudo_rounds", [])}
        final = pseudo / "checkpoints" / "last.pt"
    if plan.steps_refit <= 0 or plan.val_fold < 0:
        return final, final, metrics
    refit = opts.out / "runs" / "refit"
    if plan.estimates and "steps_refit" not in opts.plan_overrides and not (refit / "checkpoints" / "last.pt").exists():
        size_refit(plan, opts, time.perf_counter() - start, seconds_per_step(single / "log.jsonl"))
        if plan.steps_refit <= 0:
            return final, final, metrics
    with _meter(opts)("train: refit on every experiment"):
        m3 = train(run_config(plan, opts, store_path, refit, "data.val_fold=-1", f"train.init_from={final}",
                              f"train.max_steps={plan.steps_refit}", f"optim.lr={plan.lr * REFIT_LR}",
                              f"optim.warmup_steps={max(1, plan.steps_refit // 10)}"), plan)
    metrics["refit"] = _scalars(m3)
    print(f"   refit on every train experiment: {plan.steps_refit} steps")
    return final, refit / "checkpoints" / "last.pt", metrics


def seconds_per_step(log_file: Path) -> float:
    """A finished run's seconds per optimizer step (from its log.jsonl): the median over its logging intervals,
    so that the intervals holding a validation pass or a checkpoint (the refit has neither) do not count."""
    import numpy as np

    events = [e for e in map(json.loads, log_file.read_text().splitlines()) if e["event"] == "train"]
    if len(events) < 2:
        raise cellio.CellioError(f"{log_file}: fewer than two train log lines; cannot time the run's steps")
    t, step = np.array([e["time"] for e in events]), np.array([e["step"] for e in events])
    return float(np.median(np.diff(t) / np.maximum(np.diff(step), 1)))


def size_refit(plan: Plan, opts: JobOptions, elapsed_s: float, step_s: float) -> None:
    """Set `plan.steps_refit` from the time the budget has left after `elapsed_s`, at the single stage's real
    seconds per step, less the plan's estimates of prediction and the chain and its 5 % margin; save the plan.
    The plan's step measurement is a few steps at the job's start (measured 15-20 % slow against the real run),
    so the refit is where the budget it left unused is spent."""
    left = plan.budget_s - elapsed_s - plan.estimates.get("predict", 0.0) - plan.estimates.get("chain", 0.0) \
        - 0.05 * plan.budget_s
    steps = max(0, int(left / max(step_s, 1e-6))) // STEP_QUANTUM * STEP_QUANTUM
    if steps < STEP_QUANTUM:
        plan.reasons.append(f"refit: {max(left, 0):.0f} s left at {step_s:.2f} s per step when it was due: no refit")
        steps = 0
    else:
        plan.reasons.append(f"refit: {steps} steps (planned {plan.steps_refit}) for the {left:.0f} s left at the "
                            f"single stage's {step_s:.3f} s per step")
    print(f"   {plan.reasons[-1]}")
    plan.steps_refit = steps
    save_plan(plan, opts.out / "plan.json")


def finetune_cell_types(plan: Plan, opts: JobOptions, store: Any, store_path: Path, init: Path) -> dict[str, Path]:
    """A short single-stage run per cell type from the joint model (`plan.steps_finetune` steps each, half the
    plan's learning rate, the same folds): {cell type: its final checkpoint}. Only cell types with a train
    experiment outside the held-out fold can be fine-tuned; the others keep the joint model."""
    if plan.steps_finetune <= 0:
        return {}
    folds = json.loads((init.parents[1] / "folds.json").read_text())
    trained = store.sites[store.sites["experiment"].isin(folds["train"])]
    ckpts: dict[str, Path] = {}
    for ct in sorted(trained["cell_type"].unique()):
        out = opts.out / "runs" / f"finetune_{ct}"
        with _meter(opts)(f"train: fine-tune {ct}"):
            m = train(run_config(plan, opts, store_path, out, f"data.cell_types=[{ct}]", f"train.init_from={init}",
                                 f"train.max_steps={plan.steps_finetune}", f"optim.lr={plan.lr * FINETUNE_LR}",
                                 f"optim.warmup_steps={max(1, plan.steps_finetune // 10)}"), plan)
        _print_metrics(f"fine-tuned on {ct}", m)
        ckpts[ct] = out / "checkpoints" / "last.pt"
    return ckpts


def _scalars(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}


def _print_metrics(name: str, metrics: dict[str, Any]) -> None:
    shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in metrics if "acc" in k and isinstance(metrics[k], float))
    print(f"   {name}: {shown}")


# ------------------------------------------------------------------------------------------------------- inference
def _cached_predictions(ckpt: Path, plan: Plan, store: Any, ds: str, file: Path, meter: Any, name: str) -> Any:
    """One checkpoint's predictions of `ds` at the plan's TTA, from `file` when it holds this checkpoint's."""
    from trainer.infer.predict import load_predictions, predict

    if file.is_file() and load_predictions(file).meta.get("checkpoint") == str(ckpt):
        return load_predictions(file)
    with meter(name):
        preds = predict(ckpt, store, datasets=ds, tta=plan.eval_tta, dihedral=plan.dihedral, adabn=plan.adabn,
                        device=_device(plan), batch_size=plan.batch, out=file)
    rate = len(preds) / max(preds.meta.get("seconds", 0.0), 1e-9)
    print(f"   {ds}: {len(preds)} views ({plan.eval_tta}) at {rate:.0f} views/s -> {file}")
    return preds


def _cached_embeddings(ckpt: Path, plan: Plan, store: Any, file: Path, meter: Any, name: str,
                       datasets: tuple[str, ...] = ("train", "test")) -> Any:
    """Every well's embedding of `datasets` (the plan's `embed_tta` views) under one checkpoint (its cell types
    only), from `file` when it holds this checkpoint's at these views (as `_cached_predictions`: a retrained model
    must not reuse an earlier model's file)."""
    import numpy as np

    from trainer.train.checkpoint import load_for_inference
    from trainer.infer.embed import WellEmbeddings, extract_embeddings

    if file.is_file():
        with np.load(file, allow_pickle=False) as z:
            if "checkpoint" in z.files and str(z["checkpoint"]) == str(ckpt) and "tta" in z.files \
                    and str(z["tta"]) == plan.embed_tta:
                return WellEmbeddings(z["id_codes"].astype(object), z["vectors"])
    model, cfg, _ = load_for_inference(ckpt, _device(plan))
    t0 = time.perf_counter()
    with meter(name):
        # whole sites are ~5x a crop's pixels: a quarter of the batch keeps the activations' memory the same
        batch = max(1, plan.batch // 4) if plan.embed_tta == "full" else plan.batch
        emb = extract_embeddings(model, cfg, store, datasets=datasets, tta=plan.embed_tta, batch_size=batch)
        np.savez(file, id_codes=emb.id_codes.astype(str), vectors=emb.vectors, checkpoint=np.array(str(ckpt)),
                 tta=np.array(plan.embed_tta))
    print(f"   embeddings of {len(emb)} wells in {time.perf_counter() - t0:.1f} s -> {file}")
    return emb


def predict_and_embed(val_ckpt: Path, test_ckpt: Path, plan: Plan, store: Any, out: Path,
                      meter: Any = None) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Out-of-fold predictions by `val_ckpt` and test predictions by `test_ckpt` at the plan's TTA; every well's
    embedding (`embed_tta` views) by `test_ckpt`, and, when the two differ (a refit), the train wells' by
    `val_ckpt` for the out-of-fold centroids: (validation, test, embeddings, validation embeddings); cached."""
    from trainer.infer.chain import no_meter

    meter = meter or no_meter
    kinds = ("validation", "test") if plan.val_fold >= 0 else ("test",)
    preds = {ds: _cached_predictions(val_ckpt if ds == "validation" else test_ckpt, plan, store, ds,
                                     out / "predictions" / f"model_{ds}.npz", meter, f"predict: {ds}") for ds in kinds}
    emb = _cached_embeddings(test_ckpt, plan, store, out / "predictions" / "embeddings.npz", meter, "embeddings")
    val_emb = emb
    if val_ckpt != test_ckpt and "validation" in preds:
        val_emb = _cached_embeddings(val_ckpt, plan, store, out / "predictions" / "embeddings_validation.npz", meter,
                                     "embeddings: train wells, before the refit", datasets=("train",))
    return [preds["validation"]] if "validation" in preds else [], [preds["test"]], [emb], [val_emb]


def predict_and_embed_finetuned(ckpts: dict[str, Path], joint: tuple[list[Any], list[Any], list[Any]], plan: Plan,
                                store: Any, out: Path, meter: Any = None) -> tuple[list[Any], list[Any], list[Any]]:
    """The per-cell-type fine-tuned models as one ensemble member: each cell type's sites predicted and embedded
    by its own model (a cell type without one keeps the joint model's rows), joined into one Predictions per split
    and one WellEmbeddings, in the shape of `predict_and_embed`'s first three."""
    from trainer.infer.embed import WellEmbeddings
    from trainer.infer.chain import no_meter
    from trainer.infer.predict import concat_predictions, load_predictions

    meter = meter or no_meter
    pred_dir = out / "predictions"
    cell_type = store.sites["cell_type"].to_numpy()
    wells = store.sites.drop_duplicates("id_code").set_index("id_code")["cell_type"]
    joint_val, joint_test, joint_emb = joint
    splits = ([("validation", joint_val[0])] if joint_val else []) + [("test", joint_test[0])]
    members: dict[str, Any] = {}
    for ds, joint_preds in splits:
        parts = []
        for ct in sorted(set(cell_type[joint_preds.index])):
            ckpt = ckpts.get(ct)
            held = ckpt is not None and json.loads((ckpt.parents[1] / "folds.json").read_text())["val"]
            if ckpt is not None and (ds == "test" or held):
                parts.append(_cached_predictions(ckpt, plan, store, ds, pred_dir / f"finetune_{ct}_{ds}.npz", meter,
                                                 f"predict: {ds}, fine-tuned {ct}"))
            else:  # no fine-tuned model for these sites: the joint model's views
                parts.append(joint_preds.rows(cell_type[joint_preds.index] == ct))
        file = pred_dir / f"finetune_{ds}.npz"
        sources = [p.meta.get("checkpoint", "joint") for p in parts]
        if file.is_file() and [p.get("checkpoint", "joint") for p in
                               load_predictions(file).meta.get("parts", [])] == sources:
            members[ds] = load_predictions(file)
        else:
            members[ds] = concat_predictions(parts, out=file)
    emb_parts = []
    for ct in sorted(set(wells)):
        if ct in ckpts:
            emb_parts.append(_cached_embeddings(ckpts[ct], plan, store, pred_dir / f"finetune_{ct}_embeddings.npz",
                                                meter, f"embeddings, fine-tuned {ct}"))
        else:
            ids = [w for w in joint_emb[0].id_codes if wells.get(w) == ct]
            emb_parts.append(joint_emb[0].select(ids))
    emb = WellEmbeddings.concat(emb_parts)
    return ([members["validation"]] if "validation" in members else [], [members["test"]], [emb])


def sample_submission(raw: Path, out: Path) -> Path:
    """Kaggle's sample_submission.csv, or (for a directory without one) the same file made from test.csv's rows."""
    given = raw / "sample_submission.csv"
    if given.is_file():
        return given
    import pandas as pd

    made = out / "sample_submission.csv"
    pd.read_csv(raw / "test.csv", usecols=["id_code"]).assign(sirna=0).to_csv(made, index=False)
    print(f"   {given} is missing: the submission follows test.csv's rows ({made})")
    return made


def run_job(opts: JobOptions) -> dict[str, Any]:
    """The whole main job; returns the chain's reports and what was submitted."""
    from trainer.infer.chain import ChainInputs, run_chain
    from trainer.infer.report import format_table

    check_job(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, title: str, fn: Any, *a: Any) -> Any:
        t = _step(title)
        with _meter(opts)(name):
            value = fn(*a)
        timings[name] = time.perf_counter() - t
        _done(t)
        return value

    raw = timed("data", "1. data", make_data, opts)
    timed("metadata", "2. metadata", summarize_metadata, raw)
    store_path = timed("ingest", "3. ingest", ingest, raw, opts)
    store = cellio.open_store(store_path)
    plan = timed("plan", "4. plan", make_job_plan, opts, store, store_path, start)
    print(plan.describe())
    ckpt, test_ckpt, metrics = timed("train", "5. train", train_models, plan, opts, store_path, start)
    tuned: dict[str, Path] = {}
    if plan.steps_finetune > 0:
        tuned = timed("finetune", "5b. fine-tune per cell type", finetune_cell_types, plan, opts, store, store_path,
                      ckpt)
    val, test, emb, val_emb = timed("predict", "6. predict, embed", predict_and_embed, ckpt, test_ckpt, plan, store,
                                    opts.out, opts.meter)
    if tuned:  # the plan never combines fine-tuning with a refit: test_ckpt is ckpt here, val_emb is emb
        tv, tt, te = timed("predict_finetuned", "6b. predict, embed: the fine-tuned models",
                           predict_and_embed_finetuned, tuned, (val, test, emb), plan, store, opts.out, opts.meter)
        val, test, emb, val_emb = val + tv, test + tt, emb + te, val_emb + te
        metrics["finetune"] = {ct: str(p) for ct, p in tuned.items()}
    t = _step("7. calibrate, ensemble, plate assignment, submission")
    truth = raw / "test_truth.csv"
    with _meter(opts)("chain"):
        result = run_chain(ChainInputs(store.sites, val, test, seed=opts.seed, embeddings=emb,
                                       val_embeddings=val_emb, whiten=plan.whiten,
                                       sample_submission=sample_submission(raw, opts.out),
                                       test_truth=truth if truth.is_file() else None,
                                       notes={"plan": plan.to_dict(), "training": metrics}), opts.out,
                           meter=opts.meter)
    timings["chain"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    _add_to_report(opts.out / "report.json", {"timings_s": timings})
    print(f"submission ({result.submitted}) -> {opts.out / 'submission.csv'}\n{format_table(result.reports)}")
    _print_rotations(result.extra.get("rotation", {}).get("test", {}))
    _done(t)
    print(f"\nmain job done in {timings['total']:.0f} s (budget {opts.budget_min:.1f} min)")
    for name in ("plan.json", "submission.csv", "report.json", "steps.png", "cell_types.png"):
        path = opts.out / name
        print(f"   {name:<15} {path if path.exists() else '(not written)'}")
    return {"submitted": result.submitted, "reports": result.reports, "timings": timings}


def _print_rotations(test: dict[str, Any]) -> None:
    """Each test experiment's plate-group rotation and, loudly, those whose evidence is contested."""
    for exp, d in sorted(test.get("decisions", {}).items()):
        rel = f", reliability {d['reliability']:.3f}" if d.get("reliability") is not None else ""
        print(f"   rotation {exp}: {d['rotation']} ({d['status']}{rel}) - {d['why']}")
    flagged = sorted(e for e, d in test.get("decisions", {}).items() if d["status"] == "contested" or d["dissent"])
    if flagged:
        print(f"   WARNING: rotation evidence contested in {', '.join(flagged)}: a model that learnt plate style "
              f"disagrees with the sources that cannot see it (report.json: rotation)")


def _add_to_report(path: Path, extra: dict[str, Any]) -> None:
    if path.is_file():
        report = json.loads(path.read_text())
        report.update(extra)
        path.write_text(json.dumps(report, indent=2))


def parse_args(argv: Sequence[str] | None, description: str | None = None) -> JobOptions:
    p = argparse.ArgumentParser(prog="python -m trainer.demo", description=description)
    p.add_argument("--data", help="an RxRx1 directory in the Kaggle layout (default: make a synthetic one in OUT/raw)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES),
                   help="the embedded synthetic set (quick = the test suite's)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MIN,
                   help=f"minutes for the whole job, data to submission (default {DEFAULT_BUDGET_MIN:g})")
    p.add_argument("--recipe", help="trainer YAML recipe under the plan's keys (trainer/recipes/*.yaml)")
    p.add_argument("--hardware", default="auto", choices=list(HARDWARE),
                   help="plan for this machine (auto), or force the CPU or GPU plan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="processes for synth and ingest (all cores if not given)")
    p.add_argument("overrides", nargs="*", help="plan.<field>=value (trainer/job/plan.py) or trainer keys "
                                                "(optim.lr=3e-4) for every training run")
    a = p.parse_args(argv)
    plan_over = {}
    for text in (o for o in a.overrides if o.startswith("plan.")):
        key, value = parse_override(text)
        plan_over[".".join(key[1:])] = value
    return JobOptions(out=Path(a.out).resolve(), data=Path(a.data) if a.data else None, profile=a.profile,
                      budget_min=a.budget, seed=a.seed, workers=a.workers,
                      recipe=Path(a.recipe) if a.recipe else None,
                      overrides=[o for o in a.overrides if not o.startswith("plan.")], plan_overrides=plan_over,
                      hardware=a.hardware)


def run_command(prog: str, job: Any, argv: Sequence[str] | None) -> int:
    """A job's command line: WARNING logging, and a cellio error as one line on stderr with exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        job(argv)
    except cellio.CellioError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
