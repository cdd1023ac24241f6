"""The main job's plan: what to train, how, and for how long, chosen from the data and the machine.

    facts = DataFacts.from_store(store); hw = Hardware.detect()
    plan = make_plan(facts, hw, budget_s=15 * 60, overrides={"crop": 256})   # pure: no timing, no I/O
    plan = fit_to_budget(plan, step_s=0.8, view_s=0.012, spent_s=40.0)       # steps from measured speeds
    plan.describe()                                                          # what it picked and why

A plan is saved as OUT/plan.json before any training, so a rerun of the main job (a resume) reuses it instead of
re-measuring. Every field can be overridden (`plan.<field>=value` on the main job's command line); trainer
config keys (`optim.lr=...`) go to every training run on top of the plan's own overrides.

What the plan picks (docs/training.md has the measurements behind each choice):
- CPU: the small 6-channel DenseNet (`densenet_tiny`) on random crops of 0.44 x the site (224 of 512 px: the
  winners trained on full sites or large crops; 96 px of 512 is too little context), batch 32, the torch loader
  in-process (DALI's CPU threads compete with torch's for two cores: measured slower here), one thread per core.
- CUDA: DenseNet-121 (DenseNet-161 with more than ~2 GPU-hours) at 384 px crops, bf16, DALI on the GPU, one
  process per GPU through torchrun, batch 32 per GPU.
- Both: a single-stage run with one validation fold held out (whole experiments), then a pseudo-label stage from
  it (test and held-out wells labelled under the plate constraint), nine-crop TTA over both sites, and the
  inference chain (calibration, ensemble weights, rotation inference, plate assignment) choosing by validation.
- Embeddings: every site whole (`embed_tta=full`: a 224 px centre crop sees a fifth of a 512 px site's cells)
  and class centres under the within-class covariance (`whiten`); both measured in docs/training.md.
- Layout: channels_last for training and inference (1.22x faster training of densenet_tiny in a full run on 2 cores).
- Per-cell-type fine-tuning (`plan.finetune_share`): a short single-stage run per cell type from the joint model,
  its predictions and embeddings one more ensemble member (on the GPU plan, as the winners did; off on CPU until
  measured to pay, docs/training.md).
- Refit (`plan.refit_share`, off by default): the held-out fold is there to choose and calibrate the chain's
  steps, but it takes a quarter of the labelled experiments from training. With a refit, the joint model trains
  on for a share of the steps on every train experiment; the validation fold is scored by the model before the
  refit (out of fold), the test set by the model after it; the main job sizes it to the time actually left when
  it starts. Measured on two foreign sets at the CPU budget it lost to one longer single stage (docs/training.md),
  so no plan turns it on.
- Within experiments (`plan.within`): where a class is in at most half the train experiments (a screen), each
  sample's softmax runs over its own experiment's classes (trainer/training/within.py).
- Objective (`plan.objective`, `classify` by default): `mae` trains a self-supervised masked-autoencoder ViT
  (`mae_vit_tiny`, one stage, crops of at most 128 px) whose head is a linear probe (docs/maps.md's row (e)).
- Steps: what the time budget leaves after ingest, prediction and the chain, at the measured step time, split
  between the stages (`pseudo_share`, `finetune_share`, `refit_share`), rounded down to a multiple of 25 so
  reruns on one machine agree.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellio.errors import ConfigError

from trainer.training.config import Config, coerce_value, from_mapping, replace
from trainer.training.disk import replaced_atomically

__all__ = ["Hardware", "DataFacts", "Plan", "make_plan", "fit_to_budget", "load_plan", "save_plan",
           "parse_overrides", "check_budget", "cuda_available", "PLAN_FIELDS", "STEP_QUANTUM"]

# real training time / measured step time x steps, main job on the foreign subtle 512 px set: 1.16 for the
# pseudo-label stage (321 s for 300 steps with 3 labelling rounds, 0.772 s per measured step), 1.12 for the single
# stage (0.848 s per step over 650 steps with its validation passes, median measured step 0.76 s)
TRAIN_OVERHEAD = 1.15
STEP_QUANTUM = 25           # steps are rounded down to a multiple of this
VIEWS = {"center": 1, "grid9": 9, "full": 1}
GPU_FINETUNE_SHARE = 0.2    # share of the GPU plan's steps in per-cell-type fine-tuning runs


def cuda_available() -> bool:
    """Whether torch sees a CUDA device here (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@dataclass(frozen=True)
class Hardware:
    cpu_cores: int
    gpus: tuple[tuple[str, float], ...] = ()   # (name, memory GiB) per visible CUDA device
    dali: bool = False

    @classmethod
    def detect(cls) -> "Hardware":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        gpus: list[tuple[str, float]] = []
        try:
            import torch

            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    prop = torch.cuda.get_device_properties(i)
                    gpus.append((prop.name, round(prop.total_memory / 2**30, 1)))
        except ImportError:
            pass
        import cellio

        return cls(cores, tuple(gpus), cellio.dali_available())

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_cores": self.cpu_cores, "gpus": [list(g) for g in self.gpus], "dali": self.dali}


@dataclass(frozen=True)
class DataFacts:
    site_size: tuple[int, int]
    train_sites: int
    test_sites: int
    classes: int                        # treatment classes in train
    train_experiments: tuple[str, ...]
    test_experiments: tuple[str, ...]
    cell_types: tuple[str, ...]
    sites_per_well: float
    experiments_per_class: float = 1.0  # the mean share of the train experiments that screen a treatment class

    @classmethod
    def from_store(cls, store: Any) -> "DataFacts":
        """The facts of a store, in its layout's terms: "train" are the labelled splits' sites, "test" those whose
        labels are hidden (none where the layout hides none)."""
        from trainer.training.layout import HIDDEN_SPLIT, label_column, labelled_splits, treatment_mask
        from trainer.training.within import experiments_per_class

        s, layout = store.sites, store.layout
        train = s[s["dataset"].isin(labelled_splits(layout))]
        test = s[s["dataset"] == HIDDEN_SPLIT] if layout.hidden_test_labels else s.iloc[:0]
        treat = train[treatment_mask(train, layout)]
        return cls((int(store.image_shape[0]), int(store.image_shape[1])), len(train), len(test),
                   int(treat[label_column(layout)].nunique()), tuple(sorted(train["experiment"].unique())),
                   tuple(sorted(test["experiment"].unique())), tuple(sorted(s["cell_type"].unique())),
                   round(len(s) / max(s["id_code"].nunique(), 1), 2),
                   round(experiments_per_class(treat, treat[label_column(layout)]), 3))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class Plan:
    """Everything the main job does, with the reason of each choice in `reasons`."""

    budget_s: float
    device: str                 # cpu | cuda
    processes: int              # training processes (torchrun when > 1)
    backend: str                # cellio loader backend
    num_workers: int
    threads: int                # torch CPU threads per process
    model: str
    crop: int
    batch: int
    lr: float
    n_folds: int
    val_fold: int               # -1: no validation fold (then the chain submits its last step)
    steps_single: int
    steps_pseudo: int           # 0: no pseudo-label stage
    pseudo_rounds: int
    eval_tta: str               # center | grid9 | full
    dihedral: bool
    adabn: bool
    batch_by: str = ""          # "" | plate: plate-pure training batches
    augment: str = "d4_shift"   # cellio augmentation preset of training (d4_photometric: blur, gain, gamma,
                                # illumination, noise - what plates differ in, issue 20)
    pseudo_share: float = 1 / 3  # share of the training steps spent in the pseudo-label stage (0: one stage)
    finetune_share: float = 0.0  # share spent fine-tuning the joint model per cell type (0: no fine-tuning)
    steps_finetune: int = 0      # steps of each cell type's fine-tuning run
    refit_share: float = 0.0     # share spent training on every train experiment after the joint model (0: none)
    steps_refit: int = 0         # steps of that refit (resized to the time left when it starts)
    embed_tta: str = "full"      # views the well embeddings average: full | grid9 | center (cellio TTA modes)
    map_layer: str = "final"     # what OUT/embeddings.parquet pools: final (the head's input) | penultimate
    within: str = ""             # "" | experiment | plate: train each sample within its experiment's classes
    objective: str = "classify"  # classify (name each well's class) | mae (masked autoencoding, self-supervised)
    whiten: bool = True          # embedding centroids under the within-class covariance (trainer.infer.embed)
    overrides: dict[str, Any] | None = None  # the plan.<field> overrides it was made with (None: a plan.json older
                                             # than this record); a rerun must not ask others (planning.py)
    estimates: dict[str, float] = field(default_factory=dict)   # seconds per step of the job
    reasons: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return from_mapping(cls, d, "plan.")

    def trainer_config(self, cfg: Config) -> Config:
        """`cfg` (a recipe's, or the defaults) with the keys every training run of this plan shares."""
        data = {"crop_size": self.crop, "batch_size": self.batch, "backend": self.backend,
                "num_workers": self.num_workers, "n_folds": self.n_folds, "val_fold": self.val_fold,
                "augment": self.augment, **({"batch_by": self.batch_by} if self.batch_by else {})}
        train = {"device": self.device, "num_threads": self.threads, "channels_last": True,
                 **({"stage": "masked_autoencoding"} if self.objective == "mae" else {})}
        return replace(cfg, data=data, model={"name": self.model}, optim={"lr": self.lr}, loss={"within": self.within},
                       train=train,
                       pseudo={"rounds": self.pseudo_rounds, "adabn": self.adabn})

    def torch_device(self) -> str:
        """Where this plan's processes compute: cuda when planned and present, else cpu."""
        return "cuda" if self.device == "cuda" and cuda_available() else "cpu"

    def describe(self) -> str:
        lines = [f"plan: {self.model} on {self.crop}px crops, batch {self.batch}, {self.device} x {self.processes} "
                 f"({self.backend} loader, {self.num_workers} workers, {self.threads} threads); "
                 f"{self.steps_single} single + {self.steps_pseudo} pseudo-label steps ({self.pseudo_rounds} "
                 f"rounds){f' + {self.steps_finetune} per cell type' if self.steps_finetune else ''}"
                 f"{f' + {self.steps_refit} refit on every experiment' if self.steps_refit else ''}; "
                 f"validation fold {self.val_fold} of {self.n_folds}; TTA {self.eval_tta}"
                 f"{' x 8 dihedral' if self.dihedral else ''}{' + AdaBN' if self.adabn else ''}; embeddings of "
                 f"{self.embed_tta} views, {'whitened' if self.whiten else 'cosine'} centroids; budget "
                 f"{self.budget_s / 60:.1f} min"]
        lines += [f"   - {r}" for r in self.reasons]
        if self.estimates:
            lines.append("   estimates: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.estimates.items()))
        return "\n".join(lines)


PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(Plan))
_OVERRIDABLE = {"device", "processes", "backend", "num_workers", "threads", "model", "crop", "batch", "lr",
                "n_folds", "val_fold", "steps_single", "steps_pseudo", "pseudo_rounds", "eval_tta", "dihedral",
                "adabn", "batch_by", "augment", "pseudo_share", "finetune_share", "steps_finetune", "embed_tta",
                "whiten", "refit_share", "steps_refit", "map_layer", "within", "objective"}
_FIELD_TYPES = typing.get_type_hints(Plan)


def parse_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`plan.<field>=value` overrides as the plan's field types (a YAML `3e-4` string is a float, `3.0` an int),
    each checked on its own (`_check_field`); ConfigError names the override and what it expects (`plan.crop=abc`,
    `plan.dihedral=maybe`, `plan.eval_tta=nine`). Pure: the main job calls it before any work."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _OVERRIDABLE:
            raise ConfigError(f"plan.{key}: not a plan field; expected one of {sorted(_OVERRIDABLE)}")
        out[key] = coerce_value(value, _FIELD_TYPES[key], f"plan.{key}")
        _check_field(key, out[key])
    return out


_MINIMUM = {"processes": 1, "num_workers": 0, "threads": 0, "crop": 1, "batch": 1, "n_folds": 1, "val_fold": -1,
            "steps_single": 0, "steps_pseudo": 0, "pseudo_rounds": 1, "steps_finetune": 0, "steps_refit": 0}
_CHOICES = {"device": ("cpu", "cuda"), "backend": ("torch", "dali"), "eval_tta": tuple(VIEWS),
            "embed_tta": tuple(VIEWS), "batch_by": ("", "plate", "experiment"), "map_layer": ("penultimate", "final"),
            "within": ("", "experiment", "plate"), "objective": ("classify", "mae")}
_SHARES = ("pseudo_share", "finetune_share", "refit_share")


def _check_field(key: str, value: Any) -> None:
    """One plan field's value on its own (combinations are checked where they matter: `fit_to_budget`)."""
    if key in _MINIMUM and value < _MINIMUM[key]:
        raise ConfigError(f"plan.{key}: expected an integer >= {_MINIMUM[key]}, found {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"plan.{key}: expected one of {list(_CHOICES[key])}, found {value!r}")
    if key in _SHARES and not 0.0 <= value < 1.0:
        raise ConfigError(f"plan.{key}: expected a share in [0, 1), found {value!r}")
    if key == "lr" and not value > 0:
        raise ConfigError(f"plan.lr: expected a positive number, found {value!r}")
    if key == "model":
        from trainer.training.models import check_model_name

        check_model_name(value, "plan.model")
    if key == "augment":
        import cellio

        if value not in cellio.list_presets():
            raise ConfigError(f"plan.augment: expected one of cellio's presets {cellio.list_presets()}, found "
                              f"{value!r}")


def check_budget(budget_s: float) -> None:
    """The main job's --budget (seconds here), checked before any work."""
    if not budget_s > 0:
        raise ConfigError(f"--budget: expected a positive number of minutes, found {budget_s / 60:g}")


# plan.within=experiment where a treatment class is, on average, in at most half the train experiments (a screen
# that puts each gene in one experiment: 1/n; RxRx1, every siRNA in every experiment: 1.0)
WITHIN_EXPERIMENTS_SHARE = 0.5


def _n_folds(facts: DataFacts) -> int:
    """About a quarter (at most a fifth on big sets) of the train experiments held out, at least two folds; one
    fold (nothing held out) where there is one experiment (an OME-Zarr plate, a single-plate screen)."""
    n = len(facts.train_experiments)
    return max(2, min(5, n // 2)) if n >= 2 else 1


def make_plan(facts: DataFacts, hw: Hardware, budget_s: float,
              overrides: dict[str, Any] | None = None) -> Plan:
    """The plan for these data on this machine (steps still 0: `fit_to_budget` sets them from measurements)."""
    check_budget(budget_s)
    h, w = facts.site_size
    side = min(h, w)
    reasons: list[str] = []
    if hw.gpus:
        gpu_hours = budget_s / 3600 * len(hw.gpus)
        model = "densenet161" if gpu_hours > 2 else "densenet121"
        crop = min(side, 384)
        plan = Plan(budget_s, "cuda", len(hw.gpus), "dali" if hw.dali else "torch", min(6, max(1, hw.cpu_cores //
                    max(len(hw.gpus), 1) - 1)), 0, model, crop, 32, 6e-4, _n_folds(facts), 0, 0, 0, 3, "grid9",
                    False, False)
        reasons.append(f"{len(hw.gpus)} CUDA device(s) ({hw.gpus[0][0]}, {hw.gpus[0][1]} GiB): {model} at {crop} px, "
                       f"bf16, one process per GPU" + ("" if hw.dali else "; DALI not installed: torch loader"))
        plan.finetune_share = GPU_FINETUNE_SHARE
        reasons.append(f"per-cell-type fine-tuning from the joint model ({GPU_FINETUNE_SHARE:.0%} of the steps, "
                       "as the 7th place and others did; plan.finetune_share=0 turns it off)")
    else:
        crop = max(32, min(side, int(round(0.44 * side / 8)) * 8))
        plan = Plan(budget_s, "cpu", 1, "torch", 0, max(1, hw.cpu_cores), "densenet_tiny", crop, 32, 2e-3,
                    _n_folds(facts), 0, 0, 0, 3, "grid9", False, False)
        reasons.append(f"no CUDA device, {hw.cpu_cores} cores: densenet_tiny on {crop} px crops (0.44 of the "
                       f"{side} px site), torch loader in-process (DALI's CPU threads compete with the model's)")
        # benchmarks/plans.py on the foreign subtle set: 850 single steps 0.896 (validation 0.804) against
        # 550 + 300 pseudo-label steps 0.882 (0.776) after plate assignment, at a CPU budget one stage pays more
        plan.pseudo_share = 0.0
        reasons.append("one training stage: at a CPU budget the pseudo-label stage's steps do more as single-stage "
                       "steps (plan.pseudo_share=0.33 turns it on)")
    plan.reasons = reasons
    if facts.test_sites == 0:
        # no hidden-label wells: the job evaluates the joint model on the held-out experiments and embeds every well
        # (trainer/job/perturbations.py); nothing to pseudo-label, no per-cell-type members for a submission
        plan.pseudo_share, plan.finetune_share = 0.0, 0.0
        reasons.append("no hidden-label test wells: one training stage (nothing to pseudo-label), no per-cell-type "
                       "fine-tuning; held-out accuracy and well embeddings from the joint model")
    if plan.n_folds < 2:
        plan.val_fold = -1
        reasons.append(f"{len(facts.train_experiments)} labelled experiment: none can be held out whole, so the "
                       "model trains on every well and nothing is validated (plan.val_fold=-1); held-out accuracy "
                       "needs two experiments or more")
    else:
        reasons.append(f"{len(facts.train_experiments)} train experiments: {plan.n_folds} folds, fold 0 held out "
                       "for validation (whole experiments)")
    if len(facts.train_experiments) > 1 and facts.experiments_per_class <= WITHIN_EXPERIMENTS_SHARE:
        plan.within = "experiment"
        reasons.append(f"a treatment class is in {facts.experiments_per_class:.0%} of the train experiments on "
                       "average: each sample trains within its experiment's classes (plan.within=experiment), so "
                       "the model cannot name a class by recognising its experiment (docs/maps.md)")
    parsed = parse_overrides(overrides or {})
    plan.overrides = dict(parsed)
    for key, value in parsed.items():
        setattr(plan, key, value)
        reasons.append(f"plan.{key}={value} (override)")
    if plan.objective == "mae":
        _self_supervised(plan, parsed)
    plan.data, plan.hardware = facts.to_dict(), hw.to_dict()
    return plan


# the self-supervised model and its training crop: a channel-agnostic ViT's tokens grow with the crop's area times
# the channels (a 56 px crop of 6 channels: 294 tokens of 8 x 8 px), and attention with their square
MAE_MODEL, MAE_MAX_CROP = "mae_vit_tiny", 128


def _self_supervised(plan: Plan, overrides: dict[str, Any]) -> None:
    """plan.objective=mae: the masked-autoencoder model (unless plan.model names another with the same
    interface), crops of at most MAE_MAX_CROP px, one training stage (pseudo-labels need a classifier)."""
    if "model" not in overrides:
        plan.model = MAE_MODEL
    if "crop" not in overrides and plan.crop > MAE_MAX_CROP:
        plan.crop = MAE_MAX_CROP
    if overrides.get("steps_pseudo", 0) > 0 or overrides.get("pseudo_share", 0) > 0:
        raise ConfigError("plan.objective=mae trains one self-supervised stage: plan.steps_pseudo and "
                          "plan.pseudo_share must be 0 (pseudo-labels train a classifier)")
    plan.pseudo_share = 0.0
    plan.reasons.append(f"plan.objective=mae: {plan.model} learns by reconstructing hidden patches (no label "
                        f"reaches its encoder; its head is a linear probe on detached features), {plan.crop} px "
                        "crops, one stage (docs/maps.md)")


def _crops_per_site(tta: str, plan: Plan, facts: DataFacts) -> float:
    """The cost of one site's views in TTA mode `tta`, in crop-sized views (a whole site costs its area)."""
    if tta == "full":
        return facts.site_size[0] * facts.site_size[1] / max(plan.crop, 1) ** 2
    return float(VIEWS[tta])


def fit_to_budget(plan: Plan, *, step_s: float, view_s: float, spent_s: float, facts: DataFacts) -> Plan:
    """Steps of both stages from the measured seconds per training step and per predicted view, after `spent_s`
    already used (ingest, setup). Prediction: every test and held-out site at the plan's TTA views, every train
    and test site at the embeddings' views, plus one centre view of every train and test site per pseudo-label
    round (the embedding centroids' references and targets). The short measurement misses validation passes,
    checkpoints and epoch starts: TRAIN_OVERHEAD."""
    step_s *= TRAIN_OVERHEAD
    for key in ("eval_tta", "embed_tta", "pseudo_share"):  # a plan.json edited by hand skips parse_overrides
        _check_field(key, getattr(plan, key))
    views = _crops_per_site(plan.eval_tta, plan, facts) * (8 if plan.dihedral else 1) * (2 if plan.adabn else 1)
    held = facts.train_sites / max(plan.n_folds, 1) if plan.val_fold >= 0 else 0.0
    predict_s = view_s * (facts.test_sites + held) * views
    pseudo_s = 0.0
    if plan.pseudo_share > 0:
        pseudo_s = view_s * (facts.test_sites + facts.train_sites) * plan.pseudo_rounds * (2 if plan.adabn else 1)
    if not 0.0 <= plan.finetune_share < 1.0 or plan.pseudo_share + plan.finetune_share >= 1.0:
        raise ConfigError(f"plan.finetune_share: expected a share in [0, 1) that leaves steps for the joint model "
                          f"with plan.pseudo_share={plan.pseudo_share:g}, found {plan.finetune_share!r}")
    refit = _refit_share(plan)
    embed_sites = facts.test_sites + facts.train_sites + (facts.train_sites if refit > 0 else 0)
    # with a refit, the model before it embeds the train wells once more (the out-of-fold centroids' references)
    predict_s += view_s * embed_sites * _crops_per_site(plan.embed_tta, plan, facts)
    if plan.finetune_share > 0:  # the fine-tuned models predict and embed every site once more (its cell type's)
        predict_s *= 2
    # the chain: 2-4 s for the foreign subtle set's ~1,300 scored sites on 2 cores
    chain_s, margin_s = 5.0 + 0.002 * (facts.test_sites + held), 0.05 * plan.budget_s
    left = plan.budget_s - spent_s - predict_s - pseudo_s - chain_s - margin_s
    total = max(0, int(left / max(step_s, 1e-6)))
    n_types = max(len(facts.cell_types), 1)
    finetune = int(total * plan.finetune_share / n_types) // STEP_QUANTUM * STEP_QUANTUM
    total -= finetune * n_types
    steps_refit = int(total * refit) // STEP_QUANTUM * STEP_QUANTUM
    total -= steps_refit
    joint_share = 1 - plan.pseudo_share - plan.finetune_share - refit
    single = int(total * joint_share / (joint_share + plan.pseudo_share)) // STEP_QUANTUM * STEP_QUANTUM
    pseudo = (total - single) // STEP_QUANTUM * STEP_QUANTUM if plan.pseudo_share > 0 else 0
    if single < 2 * STEP_QUANTUM:
        raise ConfigError(f"the budget ({plan.budget_s / 60:.1f} min) leaves {max(left, 0):.0f} s for training "
                          f"at {step_s:.2f} s per step after {spent_s:.0f} s spent and ~{predict_s + pseudo_s:.0f} s "
                          f"of prediction: raise --budget or lower plan.crop / plan.eval_tta")
    plan.steps_single, plan.steps_pseudo = single, pseudo if pseudo >= STEP_QUANTUM else 0
    plan.steps_finetune, plan.steps_refit = finetune, steps_refit
    if plan.finetune_share > 0 and finetune == 0:
        plan.reasons.append(f"plan.finetune_share={plan.finetune_share:g} leaves under {STEP_QUANTUM} steps per cell "
                            "type: no fine-tuning (raise --budget, or plan.steps_finetune=N)")
    plan.reasons.append(f"measured {step_s:.3f} s per step and {1000 * view_s:.1f} ms per view: "
                        f"{plan.steps_single} single-stage steps, {plan.steps_pseudo} pseudo-label steps"
                        + (f", {finetune} fine-tuning steps per cell type" if plan.finetune_share > 0 else "")
                        + (f", {steps_refit} refit steps on every train experiment" if refit > 0 else ""))
    plan.estimates = {"spent": spent_s,
                      "train": (plan.steps_single + plan.steps_pseudo + finetune * n_types + steps_refit) * step_s,
                      "pseudo-label predictions": pseudo_s if plan.steps_pseudo else 0.0, "predict": predict_s,
                      "chain": chain_s}
    return plan


def _refit_share(plan: Plan) -> float:
    """The share of the steps the refit gets: `plan.refit_share`, or 0 where there is no held-out fold (the joint
    model then trains on every experiment already)."""
    share = plan.refit_share
    if not 0.0 <= share < 1.0 or plan.pseudo_share + plan.finetune_share + share >= 1.0:
        raise ConfigError(f"plan.refit_share: expected a share in [0, 1) that leaves steps for the joint model with "
                          f"plan.pseudo_share={plan.pseudo_share:g} and plan.finetune_share={plan.finetune_share:g}, "
                          f"found {share!r}")
    if share > 0 and plan.finetune_share > 0:
        # the fine-tuned models train with the fold held out and start from the joint model: which of the two
        # joint models they would follow, and score validation with, is not defined
        raise ConfigError(f"plan.refit_share={share:g} with plan.finetune_share={plan.finetune_share:g}: the refit "
                          "and per-cell-type fine-tuning do not combine; set one of them to 0")
    if share > 0 and plan.val_fold < 0:
        if not any(r.startswith("no held-out fold") for r in plan.reasons):
            plan.reasons.append("no held-out fold (plan.val_fold=-1): the joint model trains on every experiment, "
                                "no refit")
        return 0.0
    return share


def save_plan(plan: Plan, path: str | Path) -> Path:
    path = Path(path)
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(plan.to_dict(), indent=2))
    return path


def load_plan(path: str | Path) -> Plan:
    return Plan.from_dict(json.loads(Path(path).read_text()))

