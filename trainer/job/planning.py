"""The main job's plan step: the plan for these data on this machine (trainer/job/plan.py), its batch checked
against the training sites, its steps fitted to the budget from a short measurement, saved as OUT/plan.json.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

import cellio

from trainer.infer.predict import predict_views
from trainer.job.options import JobOptions
from trainer.job.plan import (DataFacts, Hardware, Plan, fit_to_budget, load_plan, make_plan, parse_overrides,
                              save_plan)
from trainer.job.runs import run_config
from trainer.training.checkpoint import load_for_inference
from trainer.training.data import count_train_sites
from trainer.training.folds import split_experiments
from trainer.training.loop import run

__all__ = ["make_job_plan", "check_rerun_overrides", "check_batch", "measure"]

log = logging.getLogger(__name__)


def make_job_plan(opts: JobOptions, store: Any, store_path: Path, start: float) -> Plan:
    """OUT/plan.json when it exists (a rerun), else a new plan fitted to the budget by measurement; what it picked
    and why is reported before any training."""
    path = opts.out / "plan.json"
    if path.is_file():
        plan = load_plan(path)
        check_rerun_overrides(plan, opts.overrides.plan, path)
        log.info("plan from %s (delete it to plan again)", path)
    else:
        plan = _new_plan(opts, store, store_path, start)
        save_plan(plan, path)
    log.info("%s", plan.describe())
    return plan


def _new_plan(opts: JobOptions, store: Any, store_path: Path, start: float) -> Plan:
    overrides = opts.overrides.plan
    facts = DataFacts.from_store(store)
    hw = Hardware.detect()
    if opts.hardware == "cpu":
        hw = Hardware(hw.cpu_cores, (), hw.dali)
    elif opts.hardware == "gpu" and not hw.gpus:  # the GPU plan's code path on a CPU machine (tests)
        n = overrides.get("processes", 1)
        hw = Hardware(hw.cpu_cores, tuple(("(forced) cpu", 0.0) for _ in range(n)), hw.dali)
    plan = make_plan(facts, hw, opts.budget_min * 60, overrides)
    if plan.device == "cuda" and plan.torch_device() == "cpu":
        plan.device = "cpu"
    check_batch(plan, opts, store, store_path)  # before the budget's measurement trains
    if {"steps_single", "steps_pseudo"} <= set(overrides):  # nothing to measure
        plan.reasons.append("steps given as plan overrides: no measurement, no budget check")
    else:
        step_s, view_s = measure(plan, opts, store, store_path)
        plan = fit_to_budget(plan, step_s=step_s, view_s=view_s, spent_s=time.perf_counter() - start, facts=facts)
    return plan


# what fit_to_budget sets from measurements whatever a single override said (both step counts given: no fit)
_FITTED = ("steps_single", "steps_pseudo", "steps_finetune", "steps_refit")


def check_rerun_overrides(plan: Plan, overrides: dict[str, Any], path: Path) -> None:
    """A rerun reuses OUT/plan.json; a `plan.<field>=value` it is given that the saved plan was not made with would
    be ignored (a different objective, model or step count trained as before, silently): a ConfigError naming each,
    before any work. The overrides the plan was made with pass, and so does a rerun that gives none. A plan.json
    older than the record of its overrides is compared field by field (the fitted step counts excepted)."""
    given = parse_overrides(overrides)
    if plan.overrides is not None:
        recorded = parse_overrides(plan.overrides)
        differ = [f"plan.{k}={v!r} (the saved plan was made with "
                  f"{'plan.' + k + '=' + repr(recorded[k]) if k in recorded else 'no such override'})"
                  for k, v in given.items() if k not in recorded or recorded[k] != v]
    else:
        differ = [f"plan.{k}={v!r} (the saved plan has {getattr(plan, k)!r})"
                  for k, v in given.items() if k not in _FITTED and getattr(plan, k) != v]
    if differ:
        raise cellio.ConfigError(f"{path} exists: this run's {', '.join(differ)} would be ignored by the rerun that "
                                 f"reuses it; delete {path.parent} (or {path.name} to plan again, its runs then "
                                 "refuse a changed config) or give the saved plan's values")


def check_batch(plan: Plan, opts: JobOptions, store: Any, store_path: Path) -> None:
    """plan.batch against the training sites of each run the plan trains with it (the single stage; each cell
    type's fine-tuning), one batch per process: a ConfigError naming plan.batch, not the loader's own words
    (last_batch, batch_size) from inside the first training run. Plate-pure batches (plan.batch_by) are checked by
    the loader per plate."""
    cfg = run_config(plan, opts, store_path, opts.out / "runs" / "single")
    if cfg.data.batch_by:
        return
    split = split_experiments(cfg.data, store.sites)
    runs = [("the single stage", cfg)]
    if plan.steps_finetune > 0:
        trained = store.sites[store.sites["experiment"].isin(split.train)]
        runs += [(f"the fine-tuning of {ct}", run_config(plan, opts, store_path, opts.out / "runs" / f"finetune_{ct}",
                                                         data={"cell_types": [ct]}))
                 for ct in sorted(trained["cell_type"].unique())]
    for what, run_cfg in runs:
        n, batch = count_train_sites(run_cfg, store.sites, split.train), run_cfg.data.batch_size
        if n < batch * plan.processes:
            key = "plan.batch" if batch == plan.batch else "data.batch_size"  # a trainer key given on top wins
            per = "" if plan.processes == 1 else f" on each of {plan.processes} processes"
            raise cellio.ConfigError(
                f"{key}={batch}: {what} trains on {n} sites (train experiments {split.train}), fewer than one "
                f"batch of {batch}{per}; set {key} to at most {max(n // plan.processes, 1)}")


def measure(plan: Plan, opts: JobOptions, store: Any, store_path: Path) -> tuple[float, float]:
    """(seconds per training step, seconds per predicted view) of this plan on this machine: a few real steps of
    the single stage (trainer.training.loop.run in-process), then a few batches of prediction."""
    calib = opts.out / "runs" / "calibration"
    # a scratch run: an earlier attempt's log.jsonl would otherwise be appended to and its times read as ours
    shutil.rmtree(calib, ignore_errors=True)
    warm, timed = 2, 6
    cfg = run_config(plan, opts, store_path, calib, train={"max_steps": warm + timed, "log_every": 1,
                                                           "progress": False, "resume": False,
                                                           "device": plan.torch_device()})
    run(cfg)
    times = [e["time"] for e in map(json.loads, (calib / "log.jsonl").read_text().splitlines())
             if e["event"] == "train"]
    # the median step: one slow step of six (a log flush, another process waking) would otherwise cost the whole
    # run its share of steps (foreign subtle set: one 1.30 s step among 0.75-0.83 s ones made the mean 0.91 s)
    step_s = float(np.median(np.diff(times[warm - 1:])))
    model, mcfg, class_map = load_for_inference(calib / "checkpoints" / "last.pt", plan.torch_device())
    target = (store.sites["dataset"] == "test").to_numpy()  # RxRx1's hidden-label wells, the ones predicted most
    test_rows = store.sites.index[target if target.any() else slice(None)][:48].to_numpy()
    t0 = time.perf_counter()
    preds = predict_views(model, mcfg, class_map, store, datasets=None, indices=test_rows, tta="center",
                          batch_size=plan.batch, progress=False)
    view_s = (time.perf_counter() - t0) / max(len(preds), 1)
    return step_s, view_s
