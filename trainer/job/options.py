"""What the user asks of the main job: `JobOptions`, the KEY=VALUE words parsed once (`Overrides`), the command
line that makes both (`parse_args`), and the check of all of it before any work (`check_job`).

    opts = parse_args(["--out", "out/demo", "plan.crop=256", "optim.lr=3e-4"])
    opts.overrides.plan        # {"crop": 256}: plan fields (trainer/job/plan.py), typed by check_job
    opts.overrides.trainer     # (Override(("optim", "lr"), 0.0003, ...),): trainer keys for every training run
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellio.errors import ConfigError

from trainer.infer.chain import Meter, no_meter
from trainer.job.plan import check_budget, parse_overrides
from trainer.training.config import Override, check_config, override, parse_override, read_recipe, replace

__all__ = ["DEFAULT_BUDGET_MIN", "HARDWARE", "PROFILES", "Overrides", "JobOptions", "detect_dataset", "check_job", "add_arguments",
           "parse_args"]

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


@dataclass(frozen=True)
class Overrides:
    """The user's KEY=VALUE words, each parsed once: `plan.<field>=value` for the plan, every other key for every
    training run's config (on top of the plan's keys)."""

    plan: dict[str, Any] = field(default_factory=dict)   # plan field -> value (as YAML reads it; check_job types it)
    trainer: tuple[Override, ...] = ()                   # trainer config keys, in the order given

    @classmethod
    def parse(cls, texts: Sequence[str]) -> Overrides:
        plan: dict[str, Any] = {}
        trainer: list[Override] = []
        for text in texts:
            o = parse_override(text)
            if text.startswith("plan."):
                plan[".".join(o.key[1:])] = o.value
            else:
                trainer.append(o)
        return cls(plan, tuple(trainer))

    def words(self) -> list[str]:
        """As KEY=VALUE words again (for reports)."""
        return [f"plan.{k}={v}" for k, v in self.plan.items()] + [o.text for o in self.trainer]


@dataclass
class JobOptions:
    out: Path
    data: Path | None = None          # None: the embedded synthetic set in OUT/raw
    dataset: str | None = None        # the registered data set --data holds (cellio.list_datasets()); None: cellio
                                      # recognises it (detect_dataset; the ingest with reader=None)
    metadata: Path | None = None      # the perturbation tables the data set's reader joins at the ingest (JUMP's
                                      # consortium metadata/, an OME-Zarr plate's CSV): cellio.ingest(metadata=)
    profile: str = "default"
    budget_min: float = DEFAULT_BUDGET_MIN
    seed: int = 0
    workers: int | None = None        # synth and ingest processes
    recipe: Path | None = None        # trainer YAML under the plan's own keys
    overrides: Overrides = field(default_factory=Overrides)
    hardware: str = "auto"            # auto | cpu | gpu (gpu on a CPU machine: the GPU plan's code path)
    meter: Meter = no_meter           # name -> context manager around each step (trainer.job.meter.StepMeter)


def detect_dataset(raw: Path) -> str:
    """The registered data set whose raw directory `raw` looks like (cellio.find_dataset: what
    `cellio.ingest(reader=None)` reads it as), or a ConfigError listing every data set cellio knows and what its
    directory holds."""
    import cellio

    found = cellio.find_dataset(raw)
    if found is None:
        known = "; ".join(f"{name}: {cellio.get_dataset(name).raw_description}" for name in cellio.list_datasets())
        raise ConfigError(f"--data {raw}: not recognised as the raw directory of a data set cellio knows ({known}); "
                          "name its data set with --dataset NAME")
    return str(found.name)


def check_job(opts: JobOptions) -> None:
    """Everything the command line asks for, checked before any work (on the real data the ingest takes hours, so
    a typo must not wait for step 4): the budget, every plan override (type and range), the recipe and every
    trainer key (through the trainer's own config check), the model names, the profile and the hardware choice.
    The plan overrides are replaced by their typed values."""
    check_budget(opts.budget_min * 60)
    if opts.profile not in PROFILES:
        raise ConfigError(f"--profile: expected one of {sorted(PROFILES)}, found {opts.profile!r}")
    if opts.hardware not in HARDWARE:
        raise ConfigError(f"--hardware: expected one of {list(HARDWARE)}, found {opts.hardware!r}")
    if opts.dataset is not None:
        import cellio

        if opts.dataset not in cellio.list_datasets():
            raise ConfigError(f"--dataset: expected a registered data set, one of {list(cellio.list_datasets())}, "
                              f"found {opts.dataset!r}")
        if opts.data is None and opts.dataset != "rxrx1":
            raise ConfigError(f"--dataset {opts.dataset}: needs --data DIR (the embedded synthetic set is RxRx1's)")
    elif opts.data is not None and Path(opts.data).is_dir():
        detect_dataset(Path(opts.data))  # a directory no reader recognises: named before any work
    if opts.metadata is not None and (opts.data is None or not Path(opts.metadata).exists()):
        raise ConfigError(f"--metadata {opts.metadata}: " + ("needs --data DIR (the embedded synthetic set has its "
                                                            "labels)" if opts.data is None else "no such file or "
                                                            "directory"))
    if opts.workers is not None and (type(opts.workers) is not int or opts.workers < 1):  # as cellio words it
        raise ConfigError(f"--workers: expected an integer >= 1 or None, found {opts.workers!r}")
    opts.overrides = dataclasses.replace(opts.overrides, plan=parse_overrides(opts.overrides.plan))
    # the recipe and the user's trainer keys as every training run will read them (the plan's own keys, set
    # between the two, are checked by parse_overrides above)
    cfg = override(replace(read_recipe(opts.recipe), train={"seed": opts.seed}), opts.overrides.trainer)
    cfg = replace(cfg, out=str(opts.out))
    check_config(cfg)
    from trainer.training.models import check_model_name  # torch: not before the command line is read

    check_model_name(cfg.model.name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a data set's raw directory: RxRx1 in the Kaggle layout, or any data set cellio "
                                  "reads (default: make a synthetic RxRx1 set in OUT/raw)")
    p.add_argument("--dataset", help="the registered data set --data holds (cellio.list_datasets()), when cellio's "
                                     "ingest should not decide")
    p.add_argument("--metadata", help="the perturbation tables the data set's reader joins at the ingest, where its "
                                      "labels live apart from the images (JUMP: the consortium's metadata/ folder; "
                                      "an OME-Zarr plate: its perturbation CSV)")
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


def parse_args(argv: Sequence[str] | None, description: str | None = None) -> JobOptions:
    p = argparse.ArgumentParser(prog="python -m trainer.demo", description=description)
    add_arguments(p)
    a = p.parse_args(argv)
    return JobOptions(out=Path(a.out).resolve(), data=Path(a.data) if a.data else None, dataset=a.dataset,
                      metadata=Path(a.metadata) if a.metadata else None, profile=a.profile,
                      budget_min=a.budget, seed=a.seed, workers=a.workers,
                      recipe=Path(a.recipe) if a.recipe else None, overrides=Overrides.parse(a.overrides),
                      hardware=a.hardware)
