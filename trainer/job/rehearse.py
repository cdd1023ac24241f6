"""A rehearsal of the whole main job at RxRx1's real cardinality, with tiny images and a tiny model: wall time
and peak memory (RSS) of every step, and the size of every file it writes.

    python -m trainer.job.rehearse OUT                        # 125,472 sites of 32 px (cellio synth --layout rxrx1)
    python -m trainer.job.rehearse OUT --size 16 --experiments HUVEC-01 RPE-01 HUVEC-17    # a reduced real layout
    python -m trainer.job.rehearse OUT --budget 60 plan.steps_single=100 optim.lr=1e-3     # main-job overrides

It runs `trainer.job.main.run_job` itself, the main job's code path end to end (metadata -> ingest -> plan ->
single stage -> pseudo-label stage -> a fine-tuning run per cell type -> predictions of every validation and test
site at the plan's full TTA (nine crops; `--dihedral` adds the 8 dihedral views, 8x the views, which the main
job's plans leave off), by the joint and by the fine-tuned models -> embeddings -> aggregation, stacker,
calibration, ensemble, plate assignment, submission), with the plan's model replaced by `convnet_micro` and its
training steps cut to a few (plan overrides, as a user would give them); then one epoch of the training loader
without a model, and `cellio.validate_submission` against the set's sample_submission.csv. What breaks at the
real size (memory, a Python loop over every file, a progress bar that never moves) breaks here first, in
minutes, not on rented GPUs after hours.

Every step is timed by `trainer.job.meter.StepMeter` (the method: there); the table goes to OUT/rehearsal.md and
OUT/rehearsal.json, with the plan, the data set's counts and every file's size. A rerun reuses what is complete
(the synthetic set, the store, checkpoints, prediction files, like the main job); steps it skips keep the
measurement of the run that did them (OUT/steps.jsonl).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import cellio

from trainer.job.console import Printer, console
from trainer.job.dataset import sample_submission
from trainer.job.main import run_command, run_job
from trainer.job.meter import StepMeter
from trainer.job.options import JobOptions, Overrides
from trainer.job.plan import load_plan

__all__ = ["RehearsalOptions", "rehearse", "rehearsal_overrides", "file_sizes", "format_steps", "main"]

log = logging.getLogger(__name__)

MARKER = ".cellio-rehearsal-synth.json"


@dataclass
class RehearsalOptions:
    out: Path
    size: int = 32                           # image side, pixels
    experiments: list[str] | None = None     # a subset of the real layout's experiments (None: all 51)
    budget_min: float = 60.0                 # the main job's --budget (the plan's steps are given, not fitted)
    tta: str = "grid9"                       # the plan's eval TTA ...
    dihedral: bool = False                   # ... times the 8 dihedral views (off in the main job's plans)
    steps_single: int = 50
    steps_pseudo: int = 25
    steps_finetune: int = 10                 # per cell type (0: no per-cell-type fine-tuning)
    batch: int = 256
    seed: int = 0
    workers: int | None = None               # synth and ingest processes
    overrides: Overrides = field(default_factory=Overrides)  # plan.<field>=value or trainer keys, as the main job
    synth_only: bool = False                 # make (or reuse) the set, then stop


def rehearsal_overrides(opts: RehearsalOptions) -> dict[str, Any]:
    """The plan overrides of a rehearsal: the tiny model, few steps, the full TTA, the whole site as the crop."""
    return {"model": "convnet_micro", "crop": opts.size, "batch": opts.batch, "steps_single": opts.steps_single,
            "steps_pseudo": opts.steps_pseudo, "steps_finetune": opts.steps_finetune, "eval_tta": opts.tta,
            "dihedral": opts.dihedral}


def make_set(opts: RehearsalOptions) -> tuple[Path, bool]:
    """OUT/raw: the real layout at `size` px (made once, then reused while the parameters match); (path, reused)."""
    raw = opts.out / "raw"
    params = {"layout": "rxrx1", "size": opts.size, "experiments": opts.experiments, "seed": opts.seed}
    marker = raw / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        log.info("real-layout set already at %s", raw)
        return raw, True
    summary = cellio.synthesize(raw, layout="rxrx1", size=opts.size, experiments=opts.experiments, seed=opts.seed,
                                workers=opts.workers, check=False)
    marker.write_text(json.dumps({"params": params, "sites": summary["sites"]}, indent=2))
    log.info("real-layout set -> %s: %s sites (%s train, %s test) in %.0f s", raw, summary["sites"],
             summary["train_sites"], summary["test_sites"], summary["seconds"])
    return raw, False


def loader_epoch(store_path: Path, plan: Any) -> dict[str, Any]:
    """One epoch of the training loader over every train site (the plan's crop, batch, backend), no model."""
    from tqdm.auto import tqdm

    loader = cellio.create_loader(store_path, plan.batch, train=True, crop_size=plan.crop, backend=plan.backend,
                                  num_workers=plan.num_workers, device="cpu", datasets=("train",))
    t0, sites = time.perf_counter(), 0
    for batch in tqdm(loader, total=len(loader), desc="loader epoch", unit="batch"):
        sites += len(batch["index"])
    seconds = time.perf_counter() - t0
    log.info("%d sites in %d batches, %.0f sites/s", sites, len(loader), sites / max(seconds, 1e-9))
    return {"sites": sites, "batches": len(loader), "seconds": seconds}


def file_sizes(root: Path, *, group_over: int = 50) -> list[dict[str, Any]]:
    """Every file under `root` with its size; a folder with more than `group_over` entries (the images, the
    store's chunk folders) is one row: its file count and total size."""
    rows: list[dict[str, Any]] = []

    def walk(d: Path) -> None:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
        files = [e for e in entries if e.is_file(follow_symlinks=False)]
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        if len(entries) > group_over:
            n, total = _tree_size(Path(d))
            rows.append({"path": str(Path(d).relative_to(root)) + "/", "files": n, "bytes": total})
            return
        for e in files:
            rows.append({"path": str(Path(e.path).relative_to(root)), "files": 1, "bytes": e.stat().st_size})
        for e in dirs:
            walk(Path(e.path))

    walk(root)
    return rows


def _tree_size(d: Path) -> tuple[int, int]:
    n = total = 0
    for dirpath, _, names in os.walk(d):
        for name in names:
            n += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return n, total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_steps(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the meter's records (nested steps indented), in the order they started."""
    lines = ["| step | wall s | CPU s | peak RSS | of which children |", "|---|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: r.get("started", 0.0)):
        name = ("&nbsp;&nbsp;" * int(r.get("depth", 0))) + r["step"] + ("" if r.get("fresh", True) else " (earlier run)")
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else "-"
        lines.append(f"| {name} | {r['seconds']:.1f} | {cpu} | {_human(r['peak_rss'])} | "
                     f"{_human(r['peak_rss_children'])} |")
    return "\n".join(lines)


def _load_steps(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["step"]] = r
    return out


def _complete_before(job: Path) -> set[str]:
    """The main job's steps a rerun will find done (so it does no work in them): their measurement is the earlier
    run's."""
    done = set()
    try:
        if (job / "store.zarr").is_dir() and cellio.open_store(job / "store.zarr") is not None:
            done.add("ingest")
    except cellio.CellioError:  # absent or incomplete: this run ingests
        pass
    stages = {"train: single stage": job / "runs" / "single", "train: pseudo-label stage": job / "runs" / "pseudo"}
    for name, run in stages.items():
        if (run / "final_metrics.json").is_file():
            done.add(name)
    for run in sorted((job / "runs").glob("finetune_*")):
        if (run / "final_metrics.json").is_file():
            done.add(f"train: fine-tune {run.name.removeprefix('finetune_')}")
    if set(stages) <= done:
        done.add("train")
    for ds in ("validation", "test"):
        if (job / "predictions" / f"model_{ds}.npz").is_file():
            done.add(f"predict: {ds}")
    if (job / "predictions" / "embeddings.npz").is_file():
        done.add("embeddings")
    return done


def rehearse(opts: RehearsalOptions) -> dict[str, Any]:
    """The rehearsal (module docstring); returns what OUT/rehearsal.json holds."""
    with console() as printer:
        return _rehearse(opts, printer)


def _rehearse(opts: RehearsalOptions, printer: Printer) -> dict[str, Any]:
    opts.out = Path(opts.out).resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    steps_file = opts.out / "steps.jsonl"
    earlier = _load_steps(steps_file)
    t_start = time.time()

    def keep(record: dict[str, Any]) -> None:
        record["started"] = time.time() - record["seconds"]
        record["fresh"] = True
        record["reused"] = record.get("reused") or record["step"] in done_before
        if record["reused"]:  # nothing was done: the run that did it has the measurement
            return
        with open(steps_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    meter = StepMeter(on_record=keep)
    done_before = _complete_before(opts.out / "job")
    t0 = time.perf_counter()
    with meter("synth (cellio synth --layout rxrx1)") as step:
        raw, step["reused"] = make_set(opts)
    if opts.synth_only:
        return {"raw": str(raw)}
    job = JobOptions(out=opts.out / "job", data=raw, budget_min=opts.budget_min, seed=opts.seed,
                     workers=opts.workers, overrides=Overrides({**rehearsal_overrides(opts), **opts.overrides.plan},
                                                               opts.overrides.trainer), hardware="cpu", meter=meter)
    result = run_job(job)
    store_path = job.out / "store.zarr"
    plan = load_plan(job.out / "plan.json")
    with meter("loader epoch (training loader, no model)"):
        epoch = loader_epoch(store_path, plan)
    with meter("validate submission"):
        sample = sample_submission(raw, job.out)
        sub = cellio.validate_submission(job.out / "submission.csv", sample)
    total = time.perf_counter() - t0

    records = [{**earlier[r["step"]], "fresh": False} if r.get("reused") and r["step"] in earlier else r
               for r in meter.records]
    sites = cellio.open_store(store_path).sites
    rows = len(pd.read_csv(sample, usecols=["id_code"]))
    summary = {
        "command": "python -m trainer.job.rehearse " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("rehearse.py")
        else None,
        "options": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
                    "overrides": opts.overrides.words()},
        "data": {"sites": len(sites), "train_sites": int((sites["dataset"] == "train").sum()),
                 "test_sites": int((sites["dataset"] == "test").sum()), "wells": int(sites["id_code"].nunique()),
                 "experiments": int(sites["experiment"].nunique()), "submission_rows": rows},
        "plan": plan.to_dict(),
        "submitted": result["submitted"],
        "submission_check": str(sub) if sub is not None else "passed",
        "loader_epoch": epoch,
        "wall_s": total,
        "wall_s_since_start": time.time() - t_start,
        "steps": records,
        "files": file_sizes(opts.out),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    (opts.out / "rehearsal.json").write_text(json.dumps(summary, indent=2, default=str))
    table = format_steps(records)
    files = "\n".join(["| file | files | size |", "|---|---:|---:|"] +
                      [f"| {f['path']} | {f['files']} | {_human(f['bytes'])} |" for f in summary["files"]])
    (opts.out / "rehearsal.md").write_text(
        f"# Rehearsal: {summary['data']['sites']} sites ({summary['data']['experiments']} experiments) at "
        f"{opts.size} px\n\n{table}\n\nsubmission: {rows} rows, check {summary['submission_check']}\n\n{files}\n")
    printer.step(f"rehearsal: {summary['data']['sites']} sites, {rows} submission rows, {total:.0f} s")
    log.info("%s", table)
    log.info("-> %s", opts.out / "rehearsal.md")
    return summary


def parse_args(argv: Sequence[str] | None) -> RehearsalOptions:
    p = argparse.ArgumentParser(prog="python -m trainer.job.rehearse", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT", help="output folder (the set in OUT/raw, the job in OUT/job)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--experiments", nargs="+", metavar="EXP",
                   help="only these experiments of the real layout (default: all 51)")
    p.add_argument("--budget", type=float, default=60.0, help="the main job's --budget in minutes (default 60)")
    p.add_argument("--tta", default="grid9", choices=["center", "grid9", "full"], help="eval TTA (default grid9)")
    p.add_argument("--dihedral", action="store_true",
                   help="add the 8 dihedral views to every crop (8x the views; the main job's plans leave them off)")
    p.add_argument("--steps", type=int, nargs=2, default=(50, 25), metavar=("SINGLE", "PSEUDO"),
                   help="training steps of the two stages (default 50 25)")
    p.add_argument("--finetune-steps", type=int, default=10,
                   help="steps of each cell type's fine-tuning run (default 10; 0: none)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="synth and ingest processes (default: all cores)")
    p.add_argument("--synth-only", action="store_true", help="make the set (timed), then stop")
    p.add_argument("overrides", nargs="*", help="plan.<field>=value or trainer keys, as python -m trainer.demo")
    a = p.parse_args(argv)
    return RehearsalOptions(Path(a.out), a.size, a.experiments, a.budget, a.tta, a.dihedral, a.steps[0],
                            a.steps[1], a.finetune_steps, a.batch, a.seed, a.workers, Overrides.parse(a.overrides),
                            a.synth_only)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("trainer.job.rehearse", lambda a: rehearse(parse_args(a)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
