"""Training stages: what a run trains, on which batches, and how a batch becomes `(loss, scores)`.

The loop in trainer/train.py is the same for every stage; a stage object owns everything that differs:

    stage = create_stage(cfg)                     # from train.stage (STAGES)
    stage.configure(model)                        # which parameters train (frozen ones never get gradients)
    train_loader, val_loader = stage.loaders(model, ctx)
    net = stage.forward_module(model)             # the module DDP / torch.compile wrap
    stage.train_mode(model)                       # model.train(), except what the stage keeps in eval mode
    out = stage.step(net, batch, ctx)             # StepOutput(loss, scores (B, C), target (B,))

Stages:
  single             any model end to end (the winners' 6-channel DenseNet; a per-channel model through its
                     fusion head).
  perchannel_stage1  a per-channel model's six extractors, each with its own classifier on its own channel; the
                     scores are the mean of the six classifiers' probabilities.
  fusion_stage2      the fusion head on stage-1 extractors (train.init_from). With frozen extractors and
                     train.cache_features the features are computed once (OUT/features.zarr) and the head trains
                     on them in seconds (`CachedFusionHead`); otherwise on images (`FusionHead`).

A new training mode (pseudo-labels, say) is one new class registered in `_STAGES`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellio.errors import CellioError, ConfigError

from .config import Config
from .data import make_loader
from .features import FeatureLoader, cached_features, feature_cache_path
from .folds import FoldSplit
from .labels import ClassMap
from .models import is_perchannel
from .runtime import Env

__all__ = ["StageContext", "StageUpdate", "StepOutput", "Stage", "create_stage"]

log = logging.getLogger(__name__)

# Cosine similarities to class centres span ~0.3 between the right class and the rest; the chain fits a temperature
# of ~0.13 for them on held-out wells (report.json "calibration" of the main job on tests/foreign_subtle.py data),
# so pseudo-labelling scales them by ~1/0.13 before the plate assignment's rotation evidence reads probabilities.
CENTROID_SCALE = 8.0


@dataclass(frozen=True)
class StageContext:
    """What a stage may read: the config, the process, the data and the loss."""

    cfg: Config
    env: Env
    store: Any
    class_map: ClassMap
    split: FoldSplit
    loss_fn: nn.Module
    dtype: torch.dtype | None
    margin_fn: nn.Module | None = None   # loss.margin: the ArcFace/CosFace term on model.margin_head


@dataclass(frozen=True)
class StageUpdate:
    loader: Any                       # the train loader from now on
    event: dict[str, Any]             # what changed, for log.jsonl


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    scores: torch.Tensor   # (B, C): argmax is the prediction
    target: torch.Tensor   # (B,) class indices, IGNORE_INDEX for unlabelled rows


class Stage:
    """The default: the whole model trains on augmented images of the train experiments."""

    name = "single"

    def configure(self, model: nn.Module) -> None:
        if is_perchannel(model):
            model.channel_heads.requires_grad_(False)  # stage 1's classifiers: end to end through the fusion head

    def grad_accum(self, cfg: Config) -> int:
        return cfg.optim.grad_accum

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        val = make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.val, train=False) if ctx.split.val else None
        return make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.train, train=True), val

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _MarginForward(model) if hasattr(model, "margin_head") else model

    def train_mode(self, model: nn.Module, cfg: Config) -> None:
        """model.train(); with train.freeze_bn every BatchNorm keeps its running statistics."""
        model.train()
        if cfg.train.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, cell_type, target = _inputs(batch, ctx)
        out = net(x, cell_type)
        if isinstance(out, tuple):  # _MarginForward: (logits, cosines); the plain head stays the prediction
            logits, cosine = out
            w = ctx.cfg.loss.margin_weight
            return StepOutput((1 - w) * ctx.loss_fn(logits, target) + w * ctx.margin_fn(cosine, target), logits,
                              target)
        return StepOutput(ctx.loss_fn(out, target), out, target)

    def summary(self) -> dict[str, Any]:
        """Stage-specific figures for the run's final metrics."""
        return {}

    def begin_epoch(self, net: nn.Module, epoch: int, schedule: Any, ctx: StageContext) -> StageUpdate | None:
        """Called before each epoch's first step (after a resume too); a stage whose data changes between epochs
        returns its new train loader. The loop forks the RNG around it, so a resumed run draws the same numbers."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs besides model and loaders (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], ctx: StageContext) -> Any | None:
        """Restore `state_dict()`; returns the train loader that state implies (or None: unchanged)."""
        return None


class _MarginForward(nn.Module):
    """forward = (head logits, margin-head cosines) from one features pass; DDP and compile wrap this forward."""

    wraps_model = True  # trainer.train.runtime.unwrap looks through it

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x, cell_type)
        return self.model.forward_head(feats, cell_type), self.model.margin_head(feats)


class _ChannelsForward(nn.Module):
    """forward = the per-channel classifiers, (B, channels, classes); DDP and compile wrap this forward."""

    wraps_model = True  # trainer.train.runtime.unwrap looks through it

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_channels(x)


class PerChannelStage1(Stage):
    name = "perchannel_stage1"

    def configure(self, model: nn.Module) -> None:
        _require_perchannel(model, self.name)
        model.head.requires_grad_(False)  # stage 1 trains extractors + their own channel heads

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _ChannelsForward(model)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, _, target = _inputs(batch, ctx)
        logits = net(x)  # (B, channels, classes)
        loss = torch.stack([ctx.loss_fn(logits[:, c], target) for c in range(logits.shape[1])]).mean()
        return StepOutput(loss, logits.float().softmax(-1).mean(1), target)


class FusionHead(Stage):
    """fusion_stage2 on images: the fusion head, with the extractors frozen (train.freeze_extractors) or not."""

    name = "fusion_stage2"

    def __init__(self, freeze_extractors: bool):
        self.freeze_extractors = freeze_extractors

    def configure(self, model: nn.Module) -> None:
        _require_perchannel(model, self.name)
        model.channel_heads.requires_grad_(False)
        if self.freeze_extractors:
            model.extractors.requires_grad_(False)

    def train_mode(self, model: nn.Module, cfg: Config) -> None:
        super().train_mode(model, cfg)
        if self.freeze_extractors:  # frozen extractors keep their BatchNorm statistics too
            model.extractors.eval()


class _HeadForward(nn.Module):
    """forward = the fusion head on cached features; DDP and compile wrap this forward."""

    wraps_model = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_head(feats, cell_type)


class CachedFusionHead(FusionHead):
    """fusion_stage2 with frozen extractors on features computed once: the head's global batch is
    data.batch_size x optim.grad_accum x world_size rows, one optimizer step per batch."""

    def __init__(self) -> None:
        super().__init__(freeze_extractors=True)
        self._summary: dict[str, Any] = {}

    def grad_accum(self, cfg: Config) -> int:
        return 1

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        cfg, env = ctx.cfg, ctx.env
        sets = cached_features(model, cfg, env, ctx.store, ctx.class_map, ctx.split, ctx.dtype)
        self._summary = {"cached_features": str(feature_cache_path(cfg)),
                         "feature_train_rows": len(sets["train"])}
        global_batch = cfg.data.batch_size * cfg.optim.grad_accum * env.world_size
        common = {"rank": env.rank, "world_size": env.world_size, "seed": cfg.train.seed}
        train = FeatureLoader(sets["train"], ctx.class_map, env.device, train=True, global_batch=global_batch,
                              **common)
        val = FeatureLoader(sets["val"], ctx.class_map, env.device, train=False, global_batch=4096, **common) \
            if "val" in sets else None
        return train, val

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _HeadForward(model)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        target = ctx.class_map.encode(batch["label"])
        logits = net(batch["features"], batch["cell_type"])
        return StepOutput(ctx.loss_fn(logits, target), logits, target)


class PseudoLabel(Stage):
    """Progressive pseudo-labelling (trainer/infer/pseudo.py): the train experiments with their labels plus the test
    wells (and the held-out fold's, without their labels) that the current model labels confidently under the
    plate constraint. Round k (pseudo.rounds of them over the run) starts at epoch k * epochs / rounds and relabels
    with the model as it is then, a larger share of each plate every round. An epoch keeps the length of the train
    experiments alone (cellio samples_per_epoch), so the schedule does not move as pseudo-labels are added. Every
    rank predicts its share of the wells and all ranks gather the same logits: they choose the same labels."""

    name = "pseudo_label"

    def __init__(self) -> None:
        self.round = -1
        self.labels = pd.DataFrame({"id_code": [], "sirna": [], "margin": []})
        self.history: list[dict[str, Any]] = []

    def loaders(self, model: nn.Module, ctx: StageContext) -> tuple[Any, Any | None]:
        sites = ctx.store.sites
        is_train = sites["experiment"].isin(ctx.split.train).to_numpy() & (sites["dataset"] == "train").to_numpy()
        if not ctx.cfg.data.include_controls:
            is_train &= (sites["well_type"] == "treatment").to_numpy()
        if ctx.cfg.data.cell_types:
            is_train &= sites["cell_type"].isin(ctx.cfg.data.cell_types).to_numpy()
        targets = (sites["dataset"] == "test").to_numpy().copy()
        if ctx.cfg.pseudo.include_validation:
            targets |= sites["experiment"].isin(ctx.split.val).to_numpy() & (sites["dataset"] == "train").to_numpy()
        targets &= (sites["well_type"] == "treatment").to_numpy()
        self._train_rows, self._target_rows = np.flatnonzero(is_train), np.flatnonzero(targets)
        if not len(self._target_rows):
            raise ConfigError("train.stage=pseudo_label: the store has no test (or held-out) treatment sites to "
                              "pseudo-label")
        if not ctx.cfg.train.init_from:
            log.warning("train.stage=pseudo_label without train.init_from: round 0 labels come from an untrained "
                        "model")
        import cellio

        self._groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
        val = make_loader(ctx.cfg, ctx.store, ctx.env, ctx.split.val, train=False) if ctx.split.val else None
        return self._train_loader(ctx), val

    def _train_loader(self, ctx: StageContext) -> Any:
        sites = ctx.store.sites
        row_of = pd.Series(self._target_rows, index=sites["id_code"].to_numpy()[self._target_rows])
        label = dict(zip(self.labels["id_code"], self.labels["sirna"].astype(int)))
        pseudo = [int(r) for code, r in row_of.items() if code in label]
        rows = np.concatenate([self._train_rows, np.asarray(pseudo, dtype=np.int64)])
        return make_loader(ctx.cfg, ctx.store, ctx.env, None, train=True, datasets=None, cell_types=None,
                           controls=True, indices=rows, samples_per_epoch=len(self._train_rows),
                           labels={r: label[sites["id_code"].iat[r]] for r in pseudo})

    def begin_epoch(self, net: nn.Module, epoch: int, schedule: Any, ctx: StageContext) -> StageUpdate | None:
        k = epoch * ctx.cfg.pseudo.rounds // max(schedule.epochs, 1)
        if k <= self.round:
            return None
        from trainer.infer.pseudo import precision, round_fraction, select_pseudo_labels

        p = ctx.cfg.pseudo
        wells = self._predict_wells(net, ctx)
        fraction = round_fraction(k, p.first_fraction, p.fraction_step)
        self.labels = select_pseudo_labels(wells, ctx.store.sites, self._groups, fraction=fraction,
                                           min_z=p.min_z)
        self.round = k
        digest = hashlib.sha1(self.labels[["id_code", "sirna"]].to_csv(index=False).encode()).hexdigest()[:16]
        if ctx.env.distributed:  # every rank gathered the same logits; a difference would be a bug, not noise
            digests: list[Any] = [None] * ctx.env.world_size
            torch.distributed.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                raise CellioError(f"pseudo-label round {k}: ranks chose different labels ({digests})")
        truth = ctx.store.sites[ctx.store.sites["experiment"].isin(ctx.split.val)]
        truth = truth.drop_duplicates("id_code").set_index("id_code")["sirna"].dropna().astype(np.int64)
        prec, n = precision(self.labels, truth)
        event = {"round": k, "epoch": epoch, "fraction": fraction, "pseudo_labels": int(len(self.labels)),
                 "validation_precision": prec, "validation_labelled": n, "labels_digest": digest}
        self.history.append(event)
        log.info("pseudo-label round %d (epoch %d): %d wells (%.0f%% of each plate), held-out precision %.3f on %d",
                 k, epoch, len(self.labels), 100 * fraction, prec, n)
        return StageUpdate(self._train_loader(ctx), event)

    def _predict_wells(self, net: nn.Module, ctx: StageContext) -> Any:
        """Well scores of the targets from the model as it is now; every rank gets the same ones."""
        from .runtime import unwrap

        model = unwrap(net)
        was_training = model.training
        try:
            if ctx.cfg.pseudo.source == "embedding":
                return self._centroid_scores(model, ctx)
            return self._mean_logits(model, ctx)
        finally:
            model.train(was_training)

    def _centroid_scores(self, model: nn.Module, ctx: StageContext) -> Any:
        """Cosine of each target well to the class centres of the labelled train wells, per cell type, after
        per-plate centring (trainer.infer.embed, the chain's "embedding centroids"). Every rank computes all of them
        (one centre view per site: cheap next to training), so no gather is needed. Scaled by CENTROID_SCALE so
        that the rotation evidence of assign_plates sees probabilities, not near-uniform cosines."""
        from trainer.infer.embed import centroid_scores, extract_embeddings

        p = ctx.cfg.pseudo
        rows = np.concatenate([self._train_rows, self._target_rows])
        emb = extract_embeddings(model, ctx.cfg, ctx.store, datasets=None, indices=rows, tta=p.tta,
                                 batch_size=ctx.cfg.data.val_batch_size or ctx.cfg.data.batch_size,
                                 device=ctx.env.device, progress=ctx.cfg.train.progress and ctx.env.is_main)
        codes = ctx.store.sites["id_code"].to_numpy()
        reference = pd.unique(codes[self._train_rows]).tolist()
        targets = sorted(pd.unique(codes[self._target_rows]))
        scores = centroid_scores(emb, ctx.store.sites, reference=reference, targets=targets)
        return dataclasses.replace(scores, scores=scores.scores * CENTROID_SCALE)

    def _mean_logits(self, model: nn.Module, ctx: StageContext) -> Any:
        """Mean logits per target well; every rank predicts its share, all ranks get everyone's."""
        from trainer.infer.aggregate import mean_logits
        from trainer.infer.predict import Predictions, predict_views

        env, p = ctx.env, ctx.cfg.pseudo
        part = predict_views(model, ctx.cfg, ctx.class_map, ctx.store, datasets=None, indices=self._target_rows,
                             tta=p.tta, adabn=p.adabn, rank=env.rank, world_size=env.world_size, device=env.device,
                             batch_size=ctx.cfg.data.val_batch_size or ctx.cfg.data.batch_size,
                             progress=ctx.cfg.train.progress and env.is_main, desc="pseudo-labels: predict")
        parts = [part]
        if env.distributed:
            parts = [None] * env.world_size
            torch.distributed.all_gather_object(parts, (part.logits, part.index, part.view))
            parts = [Predictions(lg, ix, vw, part.classes) for lg, ix, vw in parts]
        logits = np.concatenate([q.logits for q in parts])
        index = np.concatenate([q.index for q in parts])
        return mean_logits(logits, index, ctx.store.sites, classes=part.classes)

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "history": list(self.history),
                "labels": {"id_code": self.labels["id_code"].tolist(), "sirna": self.labels["sirna"].tolist(),
                           "margin": self.labels["margin"].tolist()}}

    def load_state_dict(self, state: dict[str, Any], ctx: StageContext) -> Any | None:
        self.round, self.history = int(state["round"]), list(state["history"])
        self.labels = pd.DataFrame(state["labels"])
        return self._train_loader(ctx)

    def summary(self) -> dict[str, Any]:
        return {"pseudo_rounds": list(self.history)}


def _inputs(batch: dict[str, torch.Tensor], ctx: StageContext) -> tuple[torch.Tensor, ...]:
    x = batch["image"].to(ctx.env.device, non_blocking=True)
    if ctx.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cell_type = batch["cell_type"].to(ctx.env.device, non_blocking=True)
    return x, cell_type, ctx.class_map.encode(batch["label"].to(ctx.env.device))


def _require_perchannel(model: nn.Module, stage: str) -> None:
    if not is_perchannel(model):
        raise ConfigError(f"config key 'train.stage': {stage} needs a per-channel model (e.g. perchannel_tiny), "
                          f"found {type(model).__name__}")


def _fusion_stage(cfg: Config) -> Stage:
    if cfg.train.freeze_extractors and cfg.train.cache_features:
        return CachedFusionHead()
    return FusionHead(cfg.train.freeze_extractors)


# train.stage -> the stage it builds (config.STAGES lists these names)
_STAGES: dict[str, Callable[[Config], Stage]] = {
    "single": lambda cfg: Stage(),
    "perchannel_stage1": lambda cfg: PerChannelStage1(),
    "fusion_stage2": _fusion_stage,
    "pseudo_label": lambda cfg: PseudoLabel(),
}


def create_stage(cfg: Config) -> Stage:
    """The stage object for train.stage (for fusion_stage2 also train.freeze_extractors / cache_features)."""
    factory = _STAGES.get(cfg.train.stage)
    if factory is None:
        raise ConfigError(f"config key 'train.stage': unknown stage {cfg.train.stage!r}; expected one of "
                          f"{', '.join(_STAGES)}")
    return factory(cfg)
