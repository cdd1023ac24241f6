"""The trainer's config: typed dataclasses, YAML recipes, dotted command-line overrides.

    cfg = load_config("trainer/recipes/smoke_cpu.yaml", ["data.store=/tmp/s.zarr", "optim.lr=3e-4"])
    save_config(cfg, "out/config.yaml")          # the resolved config, saved beside every checkpoint

A program that builds configs (the main job) goes the typed way, checking the values once at the end:

    cfg = read_recipe(path)                                   # defaults <- recipe, types checked
    cfg = replace(cfg, train={"max_steps": 100}, out="runs/x")  # Python values, no text
    cfg = override(cfg, [parse_override("optim.lr=3e-4")])   # the user's words, parsed once
    check_config(cfg)

Unknown keys are rejected with a message naming the key (and the closest valid one); values are checked against
the field's type, so a typo fails before any work runs. Override values are parsed as YAML scalars/lists
(`optim.lr=3e-4` is a float, `data.cell_types=[HUVEC,RPE]` a list, `model.pretrained=null` is None).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cellio.errors import ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "LossConfig", "TrainConfig", "PseudoConfig", "Config",
    "STAGES", "Override", "load_config", "read_recipe", "replace", "override", "check_config", "save_config",
    "apply_overrides", "coerce_value", "parse_override", "from_mapping",
]

STAGES = ("single", "perchannel_stage1", "fusion_stage2", "pseudo_label", "masked_autoencoding")
_OPTIMIZERS = ("adamw", "sgd")
_LOSSES = ("ce", "bce")
_AMP = ("auto", "bf16", "fp16", "off")
_DEVICES = ("auto", "cpu", "cuda")
_BACKENDS = ("torch", "dali")


@dataclass
class DataConfig:
    store: str = ""                       # path of a cellio Zarr store (cellio ingest)
    crop_size: int = 224                  # square training crop, pixels
    val_crop_size: int = 0                # 0 = same as crop_size
    augment: str = "d4_shift"             # augmentation preset (cellio.transforms.list_presets()); eval strips it
    normalize: str | None = "plate"       # per-channel normalization: sample|plate|experiment|global|null
    batch_size: int = 32                  # per process (global batch = batch_size * world_size * grad_accum)
    val_batch_size: int = 0               # 0 = same as batch_size
    num_workers: int = 2                  # loader worker processes/threads
    backend: str = "torch"                # cellio loader backend: torch | dali
    n_folds: int = 5                      # folds over whole train experiments, stratified by cell type
    val_fold: int = 0                     # held-out fold; -1 = no validation, train on every experiment
    fold_seed: int = 0
    include_controls: bool = True         # controls as extra classes (1139 on RxRx1, what the winners did)
    dose_column: str = "auto"             # named labels: auto | none | a column; a class is a treatment at a dose
                                          #   (trainer/training/labels.py); class-id labels (RxRx1) ignore it
    cell_types: list[str] = field(default_factory=list)  # empty = all; one entry = a per-cell-type model
    batch_by: str = ""                    # "" | plate | experiment: training batches of one plate (for AdaBN)


@dataclass
class ModelConfig:
    name: str = "densenet_tiny"           # a name from trainer.training.models.list_models()
    pretrained: str | None = None         # local ImageNet weights file (.pth); hubs are not used
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model factory (head options, ...)


@dataclass
class OptimConfig:
    name: str = "adamw"                   # adamw | sgd
    lr: float = 1e-3                      # peak learning rate for the global batch
    weight_decay: float = 0.05
    momentum: float = 0.9                 # sgd only
    warmup_steps: int = 0                 # linear warmup, optimizer steps (wins over warmup_epochs)
    warmup_epochs: float = 0.0
    epochs: int = 1
    min_lr_ratio: float = 0.01            # cosine floor as a fraction of lr
    grad_accum: int = 1
    grad_clip: float = 0.0                # 0 = off


@dataclass
class LossConfig:
    name: str = "ce"                      # ce | bce (one-vs-all)
    label_smoothing: float = 0.0
    margin: str = "none"                  # none | arcface | cosface: a margin term on a cosine head of the
    #                                       pooled features (model.margin_head), mixed in with margin_weight
    margin_weight: float = 0.2            # loss = (1 - w) * name + w * margin term (the 1st place: 0.8 / 0.2)
    margin_m: float = 0.5                 # the margin (ArcFace: radians, 0.5; CosFace: cosine units, ~0.35)
    margin_s: float = 30.0                # the scale of the cosines
    within: str = ""                      # "" | experiment | plate: each sample's softmax over the classes its
    #                                       experiment (plate) has (trainer/training/within.py)


@dataclass
class TrainConfig:
    stage: str = "single"                 # single | perchannel_stage1 | fusion_stage2 | masked_autoencoding
    init_from: str | None = None          # checkpoint whose model weights start this run (stage 2 <- stage 1)
    freeze_extractors: bool = True        # fusion_stage2: freeze the per-channel extractors
    cache_features: bool = True           # fusion_stage2 with frozen extractors: features computed once (Zarr)
    seed: int = 0
    deterministic: bool = True            # torch.use_deterministic_algorithms where cheap
    device: str = "auto"                  # auto | cpu | cuda
    num_threads: int = 0                  # torch CPU threads per process; 0 = torch's default (1 is far faster
                                          # than 2 on an oversubscribed CPU: OpenMP threads spin-wait)
    amp: str = "auto"                     # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | off
    channels_last: bool = False
    compile: bool = False                 # torch.compile the model
    freeze_bn: bool = False               # BatchNorm layers in eval mode (running statistics)
    max_steps: int = 0                    # >0: schedule length in optimizer steps instead of epochs
    stop_at_step: int = 0                 # >0: stop (with a checkpoint) after this step; the schedule is unchanged
    resume: bool = True                   # continue from OUT/checkpoints/last.pt when it exists
    allow_schedule_change: bool = False   # a resume may change optim.lr/epochs/... and logging (then used);
                                          # data, folds, model and loss changes are always refused
    log_every: int = 10                   # optimizer steps between train log lines
    ckpt_every: int = 0                   # optimizer steps between checkpoints; 0 = at epoch ends only
    val_every: int = 1                    # epochs between validations
    progress: bool = True                 # tqdm bar on rank 0
    tensorboard: bool = True


@dataclass
class PseudoConfig:
    """train.stage=pseudo_label: rounds of pseudo-labels for the test set (trainer/infer/pseudo.py)."""

    rounds: int = 3                       # round k starts at epoch k * epochs / rounds (k = 0 at the start)
    first_fraction: float = 0.4           # share of each plate's wells labelled in round 0 ...
    fraction_step: float = 0.3            # ... and this much more each later round (capped at 1)
    include_validation: bool = True       # also pseudo-label the held-out fold (its accuracy then measures it)
    tta: str = "center"                   # views the pseudo-labels are predicted from (center | grid9 | full)
    adabn: bool = False                   # BatchNorm statistics per plate for those predictions
    min_z: float = 3.0           # rotation evidence needed to mask (trainer.infer.assign)
    source: str = "embedding"             # scores the labels come from: embedding (cosine to the train wells'
    #                                       class centres per cell type, trainer.infer.embed) | logits (the model's
    #                                       head); trainer.infer.pseudo, the labeller the run is handed


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    out: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = from_mapping(cls, d, "")
        check_config(cfg)
        return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """`value` as the annotation `tp` says (int, float, bool, str, X | None, list[str], dict), or ConfigError naming
    `key` and what was expected: the one check of a typed value, for config keys and the main job's plan fields."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, found {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [coerce_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"config key {key!r}: expected a list, found {value!r}")
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key {key!r}: expected a mapping, found {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true/false, found {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key {key!r}: expected an integer, found {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a number, found {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, found {value!r}")
    raise ConfigError(f"config key {key!r}: unsupported field type {tp!r}")  # a bug in this module


def from_mapping(cls: type, d: Any, prefix: str = "") -> Any:
    """A dataclass `cls` from a mapping: unknown keys refused (naming the closest valid one), every value typed by
    coerce_value, nested dataclasses built the same way; `prefix` names the section in messages ("optim.",
    "plan."). The trainer's one dict -> dataclass (configs, the main job's plan); values are not checked here."""
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, found {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'{hint} (valid keys in this section: "
                          f"{', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_mapping(tp, d[name], f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(d[name], tp, prefix + name)
    return cls(**kwargs)


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key {key!r}: expected one of {', '.join(allowed)}, found {value!r}")


def check_config(cfg: Config) -> None:
    """Value checks a type cannot express; raised before any work runs."""
    _choice(cfg.train.stage, STAGES, "train.stage")
    _choice(cfg.optim.name, _OPTIMIZERS, "optim.name")
    _choice(cfg.loss.name, _LOSSES, "loss.name")
    _choice(cfg.train.amp, _AMP, "train.amp")
    _choice(cfg.train.device, _DEVICES, "train.device")
    _choice(cfg.data.backend, _BACKENDS, "data.backend")
    non_negative = {"train.seed": cfg.train.seed, "data.fold_seed": cfg.data.fold_seed,
                    "data.num_workers": cfg.data.num_workers, "train.max_steps": cfg.train.max_steps,
                    "train.stop_at_step": cfg.train.stop_at_step, "train.ckpt_every": cfg.train.ckpt_every,
                    "train.num_threads": cfg.train.num_threads, "data.val_crop_size": cfg.data.val_crop_size,
                    "data.val_batch_size": cfg.data.val_batch_size, "optim.warmup_steps": cfg.optim.warmup_steps}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {key!r}: expected an integer >= 0, found {value!r}")
    positive = {"data.crop_size": cfg.data.crop_size, "data.batch_size": cfg.data.batch_size,
                "optim.epochs": cfg.optim.epochs, "optim.grad_accum": cfg.optim.grad_accum,
                "data.n_folds": cfg.data.n_folds, "train.log_every": cfg.train.log_every,
                "train.val_every": cfg.train.val_every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r}: expected a positive integer, found {value!r}")
    if not cfg.data.dose_column:
        raise ConfigError("config key 'data.dose_column': expected 'auto', 'none' or a site-table column, found ''")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr': expected a positive number, found {cfg.optim.lr!r}")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"config key 'loss.label_smoothing': expected 0 <= value < 1, "
                          f"found {cfg.loss.label_smoothing!r}")
    if not -1 <= cfg.data.val_fold < cfg.data.n_folds:
        raise ConfigError(f"config key 'data.val_fold': expected -1 (no validation) or 0..{cfg.data.n_folds - 1} "
                          f"(data.n_folds={cfg.data.n_folds}), found {cfg.data.val_fold!r}")
    if cfg.train.stage == "fusion_stage2" and not cfg.train.init_from:
        raise ConfigError("config key 'train.init_from': train.stage=fusion_stage2 needs the stage-1 checkpoint "
                          "(e.g. train.init_from=runs/stage1/checkpoints/best.pt), found none")
    _check_augment(cfg)
    if cfg.data.batch_by:
        _choice(cfg.data.batch_by, ("plate", "experiment"), "data.batch_by")
    if cfg.pseudo.rounds < 1:
        raise ConfigError(f"config key 'pseudo.rounds': expected a positive integer, found {cfg.pseudo.rounds!r}")
    for key, value in (("pseudo.first_fraction", cfg.pseudo.first_fraction),
                       ("pseudo.fraction_step", cfg.pseudo.fraction_step)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key {key!r}: expected a fraction in [0, 1], found {value!r}")
    _choice(cfg.pseudo.tta, ("center", "grid9", "full"), "pseudo.tta")
    _choice(cfg.pseudo.source, ("embedding", "logits"), "pseudo.source")
    _choice(cfg.loss.margin, ("none", "arcface", "cosface"), "loss.margin")
    _choice(cfg.loss.within, ("", "experiment", "plate"), "loss.within")
    if cfg.loss.within and cfg.loss.margin != "none":
        raise ConfigError("config key 'loss.within': the margin head's cosines are not restricted to a group's "
                          "classes; use loss.margin=none with loss.within")
    if cfg.loss.within and cfg.train.stage == "fusion_stage2" and cfg.train.freeze_extractors \
            and cfg.train.cache_features:
        raise ConfigError("config key 'loss.within': cached fusion features carry no store rows to find each "
                          "sample's classes; set train.cache_features=false with loss.within")
    if cfg.loss.margin != "none" and cfg.train.stage not in ("single", "pseudo_label"):
        raise ConfigError(f"config key 'loss.margin': the margin head trains with train.stage=single or "
                          f"pseudo_label (the 6-channel models), found train.stage={cfg.train.stage!r}")
    if cfg.loss.margin != "none" and not 0.0 < cfg.loss.margin_weight <= 1.0:
        raise ConfigError(f"config key 'loss.margin_weight': expected a weight in (0, 1], found "
                          f"{cfg.loss.margin_weight!r}")


def _check_augment(cfg: Config) -> None:
    """data.augment / normalize / crop_size as cellio's loader will take them (cellio validates, numpy only)."""
    import cellio

    _choice(cfg.data.augment, tuple(cellio.list_presets()), "data.augment")
    try:
        cellio.get_preset(cfg.data.augment).replace(normalize=cfg.data.normalize, crop_size=cfg.data.crop_size)
    except cellio.PipelineConfigError as exc:
        raise ConfigError(f"config keys 'data.augment', 'data.normalize', 'data.crop_size': {exc}") from None


@dataclass(frozen=True)
class Override:
    """One `KEY=VALUE` of a command line, parsed: the dotted key's parts and the value as YAML reads it."""

    key: tuple[str, ...]
    value: Any
    text: str                     # as the user wrote it, for messages


def parse_override(text: str) -> Override:
    """`KEY=VALUE` -> Override (the value a YAML scalar or list); ConfigError when malformed."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key {key!r} is not a dotted name like optim.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML ({exc})") from None
    return Override(tuple(key.split(".")), value, text)


def apply_overrides(d: dict[str, Any], overrides: Sequence[str | Override]) -> dict[str, Any]:
    """Set each dotted `KEY=VALUE` (text, or parsed once by parse_override) in a nested dict (a copy); keys are
    checked later by Config.from_dict."""
    import copy

    d = copy.deepcopy(d)
    for item in overrides:
        o = item if isinstance(item, Override) else parse_override(item)
        node = d
        for i, part in enumerate(o.key[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {o.text!r}: {'.'.join(o.key[:i + 1])!r} is a value, not a section")
            node = child
        node[o.key[-1]] = o.value
    return d


def load_config(path: str | Path | None = None, overrides: Sequence[str | Override] | None = None) -> Config:
    """Defaults <- YAML recipe at `path` (if any) <- dotted overrides; validated."""
    return Config.from_dict(apply_overrides(_recipe(path), list(overrides or [])))


def read_recipe(path: str | Path | None = None) -> Config:
    """Defaults <- the YAML recipe at `path` (None: the defaults alone); keys and types checked, values not yet
    (check_config, once every override is in: a recipe may leave a required key to them)."""
    return from_mapping(Config, _recipe(path), "")


def _recipe(path: str | Path | None) -> dict[str, Any]:
    """The defaults with the YAML recipe at `path` merged in, as a nested dict."""
    import yaml

    d: dict[str, Any] = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist (recipes live in trainer/recipes/)")
        with open(path, encoding="utf-8") as f:
            try:
                recipe = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top, found {type(recipe)}")
        d = _merge(d, recipe, "")
    return d


def override(cfg: Config, overrides: Sequence[str | Override]) -> Config:
    """A copy of `cfg` with the dotted overrides set; keys and types checked, values not (check_config)."""
    return from_mapping(Config, apply_overrides(cfg.to_dict(), overrides), "")


def replace(cfg: Config, **sections: Any) -> Config:
    """A copy of `cfg` with fields of its sections set to Python values, `replace(cfg, train={"max_steps": 8},
    out="runs/x")`; keys and types checked as a recipe's are (an unknown key is a ConfigError naming it), values
    not (check_config)."""
    d = cfg.to_dict()
    for section, values in sections.items():
        if isinstance(d.get(section), dict):
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r}: expected a mapping of its keys, found {values!r}")
            d[section].update(values)
        else:
            d[section] = values  # a top-level key (out), or an unknown one for from_mapping to name
    return from_mapping(Config, d, "")


def _merge(base: dict[str, Any], new: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        # model.kwargs is a free mapping: a recipe replaces it; sections merge key by key
        if isinstance(value, dict) and isinstance(out.get(key), dict) and f"{prefix}{key}" != "model.kwargs":
            out[key] = _merge(out[key], value, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    import yaml

    from .disk import replaced_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    return path
