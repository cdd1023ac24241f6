"""The main job's steps, in order (`run_job`); the command is `python -m trainer.demo` (trainer/demo.py says what
the job does, end to end). Each step is a function of its own module (dataset, planning, runs, predictions; the
chain is trainer.infer.chain); this one runs them in order under the job's console (console.py) and meter.

The store's layout decides the job's end: where its test labels are hidden (RxRx1) the inference chain writes the
submission; otherwise the model is scored on its held-out experiments and every well is embedded
(perturbations.py).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cellio

from trainer.infer.chain import ChainInputs, run_chain
from trainer.infer.report import format_table
from trainer.job.console import Printer, console
from trainer.job import perturbations
from trainer.job.dataset import ingest, make_data, sample_submission, summarize_metadata
from trainer.job.options import JobOptions, check_job
from trainer.job.plan import Plan
from trainer.job.planning import make_job_plan
from trainer.job.predictions import predict_and_embed, predict_and_embed_finetuned
from trainer.job.runs import finetune_cell_types, train_models

__all__ = ["run_job", "run_command"]

log = logging.getLogger(__name__)

OUTPUTS = ("plan.json", "submission.csv", "report.json", "steps.png", "cell_types.png")


def run_job(opts: JobOptions) -> dict[str, Any]:
    """The whole main job; returns the chain's reports and what was submitted."""
    check_job(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    with console() as printer:
        return _run(opts, printer)


def _run(opts: JobOptions, printer: Printer) -> dict[str, Any]:
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, title: str, fn: Callable[..., Any], *a: Any) -> Any:
        t = printer.step(title)
        with opts.meter(name):
            value = fn(*a)
        timings[name] = time.perf_counter() - t
        printer.done(t)
        return value

    raw = timed("data", "1. data", make_data, opts)
    timed("metadata", "2. metadata", summarize_metadata, raw, opts)
    store_path = timed("ingest", "3. ingest", ingest, raw, opts)
    store = cellio.open_store(store_path)
    plan = timed("plan", "4. plan", make_job_plan, opts, store, store_path, start)
    ckpt, test_ckpt, metrics = timed("train", "5. train", train_models, plan, opts, store_path, start)
    if not store.layout.hidden_test_labels:
        return _held_out_and_embeddings(opts, printer, plan, store, ckpt, metrics, timings, start)
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
    t = printer.step("7. calibrate, ensemble, plate assignment, submission")
    truth = raw / "test_truth.csv"
    with opts.meter("chain"):
        result = run_chain(ChainInputs(store.sites, val, test, seed=opts.seed, embeddings=emb,
                                       val_embeddings=val_emb, whiten=plan.whiten,
                                       sample_submission=sample_submission(raw, opts.out),
                                       test_truth=truth if truth.is_file() else None,
                                       notes={"plan": plan.to_dict(), "training": metrics}), opts.out,
                           meter=opts.meter)
    timings["chain"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    _add_to_report(opts.out / "report.json", {"timings_s": timings})
    log.info("submission (%s) -> %s", result.submitted, opts.out / "submission.csv")
    log.info("%s", format_table(result.reports))
    _report_rotations(result.extra.get("rotation", {}).get("test", {}))
    printer.done(t)
    printer.write(f"\nmain job done in {timings['total']:.0f} s (budget {opts.budget_min:.1f} min)")
    for name in OUTPUTS:
        path = opts.out / name
        log.info("%-15s %s", name, path if path.exists() else "(not written)")
    return {"submitted": result.submitted, "reports": result.reports, "timings": timings}


def _held_out_and_embeddings(opts: JobOptions, printer: Printer, plan: Plan, store: Any, ckpt: Path,
                             metrics: dict[str, Any], timings: dict[str, float], start: float) -> dict[str, Any]:
    """The end of the job on a data set without hidden test labels: held-out accuracy, well embeddings, report."""
    t = printer.step("6. held-out experiments: accuracy per perturbation type")
    with opts.meter("held_out"):
        if plan.val_fold < 0:  # every experiment trained (a map's model): nothing is held out to score
            held = {"skipped": "plan.val_fold=-1: the model trained on every experiment, so none is held out to "
                               "score it on"}
            log.info("held-out accuracy: %s", held["skipped"])
        else:
            held = perturbations.evaluate_held_out(ckpt, plan, store, opts.out, opts.meter)
    timings["held_out"] = time.perf_counter() - t
    printer.done(t)
    t = printer.step("7. well embeddings")
    with opts.meter("embeddings"):
        embeddings = perturbations.write_well_embeddings(ckpt, plan, store, opts.out, opts.meter)
    timings["embeddings"] = time.perf_counter() - t
    printer.done(t)
    timings["total"] = time.perf_counter() - start
    perturbations.write_report(opts.out / "report.json", {
        "dataset": store.layout.name, "held_out": held, "embeddings": str(embeddings), "checkpoint": str(ckpt),
        "plan": plan.to_dict(), "training": metrics, "timings_s": timings})
    printer.write(f"\nmain job done in {timings['total']:.0f} s (budget {opts.budget_min:.1f} min)")
    for name in perturbations.OUTPUTS:
        path = opts.out / name
        log.info("%-25s %s", name, path if path.exists() else "(not written)")
    return {"held_out": held, "embeddings": embeddings, "timings": timings}


def _report_rotations(test: dict[str, Any]) -> None:
    """Each test experiment's plate-group rotation and, loudly, those whose evidence is contested."""
    for exp, d in sorted(test.get("decisions", {}).items()):
        rel = f", reliability {d['reliability']:.3f}" if d.get("reliability") is not None else ""
        log.info("rotation %s: %s (%s%s) - %s", exp, d["rotation"], d["status"], rel, d["why"])
    flagged = sorted(e for e, d in test.get("decisions", {}).items() if d["status"] == "contested" or d["dissent"])
    if flagged:
        log.warning("rotation evidence contested in %s: a model that learnt plate style disagrees with the sources "
                    "that cannot see it (report.json: rotation)", ", ".join(flagged))


def _add_to_report(path: Path, extra: dict[str, Any]) -> None:
    if path.is_file():
        report = json.loads(path.read_text())
        report.update(extra)
        path.write_text(json.dumps(report, indent=2))


def run_command(prog: str, job: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None) -> int:
    """A job's command line: WARNING logging, and a cellio error as one line on stderr with exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        job(argv)
    except cellio.CellioError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
