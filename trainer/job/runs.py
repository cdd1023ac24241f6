"""The main job's training runs: each run's config (the recipe, the plan's keys, the user's overrides, the run's
own changes: typed, checked once), a run in this process or under torchrun, and the sequence the plan asks for
(the single stage, the pseudo-label stage, the refit; or a fine-tuning run per cell type).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import cellio

from trainer.infer.pseudo import label_wells
from trainer.job.options import JobOptions
from trainer.job.plan import STEP_QUANTUM, Plan, save_plan
from trainer.training.config import Config, check_config, override, read_recipe, replace, save_config
from trainer.training.loop import run

__all__ = ["FINETUNE_LR", "REFIT_LR", "run_config", "train", "train_models", "finetune_cell_types", "size_refit",
           "seconds_per_step"]

log = logging.getLogger(__name__)

FINETUNE_LR = 0.5               # a cell type's fine-tuning run starts at this fraction of the plan's lr
REFIT_LR = 0.5                  # the refit on every train experiment restarts at this fraction of the plan's lr
REPO = Path(__file__).resolve().parents[2]


def run_config(plan: Plan, opts: JobOptions, store_path: Path, out: Path, **changes: Any) -> Config:
    """A training run's config: the recipe (if any), the plan's keys, the user's overrides, then `out` and this
    run's `changes` (config sections, as trainer.training.config.replace takes them); checked once, at the end."""
    cfg = replace(plan.trainer_config(read_recipe(opts.recipe)), data={"store": str(store_path)},
                  train={"seed": opts.seed, "progress": True, "tensorboard": False})
    cfg = replace(override(cfg, opts.overrides.trainer), out=str(out), **changes)
    check_config(cfg)
    return cfg


def train(cfg: Config, plan: Plan) -> dict[str, Any]:
    """One training run: in this process, or under torchrun with one process per GPU (plan.processes > 1). The
    pseudo-label stage gets the inference package's labeller either way (trainer/train.py under
    torchrun)."""
    if plan.processes <= 1:
        return run(cfg, labeller=label_wells)
    requested = save_config(cfg, Path(cfg.out) / "requested.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if plan.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(plan.processes),
           "-m", "trainer.train", "--config", str(requested)]
    log.info("torchrun: %s", " ".join(cmd[3:]))
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
    with opts.meter("train: single stage"):
        m1 = train(run_config(plan, opts, store_path, single, train={"max_steps": plan.steps_single}), plan)
    _report_metrics("joint model (all channels)", m1)
    metrics = {"single": _scalars(m1)}
    final = single / "checkpoints" / "last.pt"
    if plan.steps_pseudo > 0:
        pseudo = opts.out / "runs" / "pseudo"
        with opts.meter("train: pseudo-label stage"):
            m2 = train(run_config(plan, opts, store_path, pseudo, train={
                "stage": "pseudo_label", "init_from": str(final), "max_steps": plan.steps_pseudo}), plan)
        for r in m2.get("pseudo_rounds", []):
            log.info("pseudo-label round %s: %s wells, held-out precision %.3f", r["round"], r["pseudo_labels"],
                     r["validation_precision"])
        _report_metrics("joint model + pseudo-labels", m2)
        metrics["pseudo"] = {**_scalars(m2), "rounds": m2.get("pseudo_rounds", [])}
        final = pseudo / "checkpoints" / "last.pt"
    if plan.steps_refit <= 0 or plan.val_fold < 0:
        return final, final, metrics
    refit = opts.out / "runs" / "refit"
    sized = "steps_refit" in opts.overrides.plan or (refit / "checkpoints" / "last.pt").exists()
    if plan.estimates and not sized:
        size_refit(plan, opts, time.perf_counter() - start, seconds_per_step(single / "log.jsonl"))
        if plan.steps_refit <= 0:
            return final, final, metrics
    with opts.meter("train: refit on every experiment"):
        m3 = train(run_config(plan, opts, store_path, refit, data={"val_fold": -1}, train={
            "init_from": str(final), "max_steps": plan.steps_refit}, optim={
            "lr": plan.lr * REFIT_LR, "warmup_steps": max(1, plan.steps_refit // 10)}), plan)
    metrics["refit"] = _scalars(m3)
    log.info("refit on every train experiment: %d steps", plan.steps_refit)
    return final, refit / "checkpoints" / "last.pt", metrics


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
        with opts.meter(f"train: fine-tune {ct}"):
            m = train(run_config(plan, opts, store_path, out, data={"cell_types": [ct]}, train={
                "init_from": str(init), "max_steps": plan.steps_finetune}, optim={
                "lr": plan.lr * FINETUNE_LR, "warmup_steps": max(1, plan.steps_finetune // 10)}), plan)
        _report_metrics(f"fine-tuned on {ct}", m)
        ckpts[ct] = out / "checkpoints" / "last.pt"
    return ckpts


def seconds_per_step(log_file: Path) -> float:
    """A finished run's seconds per optimizer step (from its log.jsonl): the median over its logging intervals,
    so that the intervals holding a validation pass or a checkpoint (the refit has neither) do not count."""
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
    log.info("%s", plan.reasons[-1])
    plan.steps_refit = steps
    save_plan(plan, opts.out / "plan.json")


def _scalars(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}


def _report_metrics(name: str, metrics: dict[str, Any]) -> None:
    shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in metrics if "acc" in k and isinstance(metrics[k], float))
    log.info("%s: %s", name, shown)
