"""The training loop: config -> cellio loaders -> model -> a plain loop -> checkpoints. Read it top to bottom.

    metrics = run(load_config("trainer/recipes/smoke_cpu.yaml", ["data.store=PATH", "out=DIR"]))

(`python -m trainer.train`, trainer/train.py, is its command line.)

`run` prepares a `Run` (the model, its stage, loaders, optimizer and schedule, resumed from OUT/checkpoints/last.pt
when there is one), then alternates `train_one_epoch` and `validate`. What differs between the 6-channel model,
the per-channel extractors and the fusion head on cached features is the stage object (trainer/training/stages/);
the loop has no stage-specific branch. Every stage writes OUT/checkpoints/{last,best}.pt holding the whole model
(loadable by trainer.training.checkpoint.load_for_inference).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import cellio
from cellio.errors import CellioError, ConfigError

from .checkpoint import (DataShape, apply_schedule_change, build_model, check_resume_config, load_checkpoint,
                         save_checkpoint, training_state)
from .config import Config, save_config
from .folds import split_experiments
from .labels import ClassMap
from .losses import MarginLoss, create_loss
from .within import class_sets
from .metrics import ClassificationMeter, TrainWindow
from .optim import Schedule, build_optimizer, build_scheduler
from .runlog import RunLog
from .runtime import amp_dtype, autocast, seed_everything, set_rng_state, setup_env
from .stages import Labeller, Stage, StageContext, create_stage

__all__ = ["Run", "run", "prepare", "train_one_epoch", "validate", "record_validation"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One training run's objects and its position (step, epoch, best validation accuracy)."""

    cfg: Config
    ctx: StageContext
    stage: Stage
    model: nn.Module                # the plain model (what checkpoints hold)
    net: nn.Module                  # what the loop calls: the stage's forward, under compile / DDP
    train_loader: Any
    val_loader: Any
    schedule: Schedule
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    runlog: RunLog
    shape: DataShape                # the input channels and cell types the model is built for (the store's)
    step: int = 0
    start_epoch: int = 0
    resume_mid_epoch: bool = False
    owed_validation: int | None = None  # resumed from a checkpoint taken before this epoch's validation ran
    best: float = -1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    seen: int = 0                   # images (or feature rows) this process trained on
    window: TrainWindow = field(default_factory=TrainWindow)  # train loss/accuracy since the last log line
    t0: float = field(default_factory=time.perf_counter)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.out) / "checkpoints"

    def state(self, epoch: int, *, epoch_complete: bool, loader: Any,
              validation_owed: bool = False) -> dict[str, Any]:
        return {**training_state(self.net, self.opt, self.sched, self.scaler, loader, self.cfg, self.ctx.class_map,
                                 self.shape, epoch=epoch, step=self.step, epoch_complete=epoch_complete,
                                 metrics=self.metrics),
                "stage": self.stage.state_dict(), "validation_owed": validation_owed, "runlog": self.runlog.sizes()}

    def validation_due(self, epoch: int, epoch_complete: bool) -> bool:
        """Whether `epoch` is validated at this step: at every train.val_every-th epoch end, and at the schedule's
        end even mid-epoch (max_steps)."""
        return self.val_loader is not None and ((epoch_complete and (epoch + 1) % self.cfg.train.val_every == 0)
                                                or self.step >= self.schedule.total_steps)


def run(cfg: Config, labeller: Labeller | None = None) -> dict[str, Any]:
    """Train as `cfg` says; returns the final metrics (rank 0's view; identical on every rank). train.stage=
    pseudo_label needs a `labeller` (trainer/training/stages/pseudo.py; python -m trainer.train hands it
    trainer.infer.pseudo.label_wells)."""
    r = prepare(cfg, labeller)
    env = r.ctx.env
    bar = None
    if env.is_main and cfg.train.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=r.schedule.stop_at, initial=r.step, desc=f"train {cfg.train.stage}", unit="step")
    epoch = r.start_epoch
    if r.owed_validation is not None:  # the checkpoint was written before its epoch's validation ran: run it now
        epoch = r.owed_validation
        record_validation(r, epoch, validate(r.net, r.stage, r.val_loader, r.ctx))
        if env.is_main:
            save_checkpoint(r.ckpt_dir / "last.pt", r.state(epoch, epoch_complete=epoch < r.start_epoch,
                                                            loader=r.train_loader))
    for epoch in range(r.start_epoch, r.schedule.epochs):
        if r.step >= r.schedule.stop_at:
            break
        train_one_epoch(r, epoch, bar)
        epoch_complete = r.step == r.schedule.epoch_end(epoch)
        if r.validation_due(epoch, epoch_complete):
            record_validation(r, epoch, validate(r.net, r.stage, r.val_loader, r.ctx))
        if env.is_main:
            save_checkpoint(r.ckpt_dir / "last.pt", r.state(epoch, epoch_complete=epoch_complete,
                                                            loader=r.train_loader))
    if bar is not None:
        bar.close()
    r.runlog.close()
    r.metrics.update(step=r.step, epoch=epoch, stopped_early=r.step < r.schedule.total_steps,
                     num_classes=len(r.ctx.class_map), **r.stage.summary())
    if env.is_main:  # the final figures, for whoever launched this run (the main job under torchrun)
        (Path(cfg.out) / "final_metrics.json").write_text(json.dumps(r.metrics, indent=1, default=str))
    if env.distributed:
        dist.barrier()
    return r.metrics


def prepare(cfg: Config, labeller: Labeller | None = None) -> Run:
    """Everything `run` needs, checked before the first step; resumed from last.pt when cfg.train.resume."""
    stage = create_stage(cfg, labeller)  # a stage that cannot run (pseudo_label without a labeller) fails first
    env = setup_env(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'out': {out} is a file; expected a run directory (new or existing)")
    last = out / "checkpoints" / "last.pt"
    resume_from = load_checkpoint(last) if cfg.train.resume and last.exists() else None
    changed = check_resume_config(resume_from["config"], cfg, last) if resume_from is not None else []
    if env.is_main:  # only now, with the resume checked, may anything in OUT change
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if not cfg.data.store:
        raise ConfigError("config key 'data.store': no store given; pass data.store=PATH (a cellio ingest output)")
    store = cellio.open_store(cfg.data.store)
    shape = DataShape.of_store(store)
    class_map = ClassMap.from_sites(store.sites, cfg.data.include_controls, cfg.data.dose_column)
    split = split_experiments(cfg.data, store.sites)
    log.info("%d classes; train experiments %s; held out %s", len(class_map), split.train, split.val)
    if env.is_main:  # which experiments this run held out, for prediction and reports
        (out / "folds.json").write_text(json.dumps(split.to_dict(cfg.data.val_fold), indent=1))
    model = _initial_model(cfg, class_map, shape)
    stage.configure(model)
    model.to(env.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    margin = (MarginLoss(cfg.loss.margin, cfg.loss.margin_m, cfg.loss.margin_s) if cfg.loss.margin != "none"
              else None)
    sets = class_sets(store.sites, class_map, cfg.loss.within)
    if sets is not None:
        log.info("loss.within=%s: each sample's softmax over its %s's classes (%d groups, %.1f classes each)",
                 cfg.loss.within, cfg.loss.within, len(sets.allowed), float(sets.allowed.sum(1).float().mean()))
    ctx = StageContext(cfg, env, store, class_map, split, create_loss(cfg.loss.name, cfg.loss.label_smoothing),
                       amp_dtype(cfg, env.device), margin, sets)
    train_loader, val_loader = stage.loaders(model, ctx)
    schedule = Schedule.create(cfg, len(train_loader), stage.grad_accum(cfg))
    opt = build_optimizer(cfg, model)
    r = Run(cfg, ctx, stage, model, model, train_loader, val_loader, schedule, opt,
            build_scheduler(cfg, opt, schedule), torch.amp.GradScaler(env.device.type, enabled=ctx.dtype == torch.float16),
            RunLog(out, env.is_main, cfg.train.tensorboard, shape.cell_types), shape)
    if resume_from is not None:
        _resume(r, resume_from)
        if changed:
            apply_schedule_change(r.opt, r.sched, cfg)
            log.warning("resumed with changed %s (train.allow_schedule_change)", changed)
    # the logs as they were at the checkpoint (nothing for a fresh start): the steps after it are redone
    r.runlog.rewind(resume_from.get("runlog") if resume_from is not None else {})
    r.net = _wrap(stage.forward_module(model), cfg, env)
    return r


def _initial_model(cfg: Config, class_map: ClassMap, shape: DataShape) -> nn.Module:
    model = build_model(cfg, class_map, shape)
    if cfg.train.init_from:
        init = load_checkpoint(cfg.train.init_from)
        if ClassMap.from_dict(init["classes"]) != class_map:
            raise ConfigError(f"train.init_from {cfg.train.init_from!r}: its classes differ from this run's "
                              "(different store or data.include_controls)")
        if (theirs := DataShape.from_dict(init.get("data"))) != shape:
            raise ConfigError(f"train.init_from {cfg.train.init_from!r}: built for {theirs}, this run's store needs "
                              f"{shape} (another data set or channel selection)")
        # a margin head new in this run starts fresh; every other weight must match
        missing, unexpected = model.load_state_dict(init["model"], strict=False)
        bad = [k for k in missing if not k.startswith("margin_head.")] + list(unexpected)
        if bad:
            raise ConfigError(f"train.init_from {cfg.train.init_from!r}: weights do not fit this model "
                              f"(first mismatched keys {bad[:4]}); same model.name and model.kwargs expected")
    return model


def _resume(r: Run, state: dict[str, Any]) -> None:
    r.model.load_state_dict(state["model"])
    r.opt.load_state_dict(state["optimizer"])
    r.sched.load_state_dict(state["scheduler"])
    r.scaler.load_state_dict(state["scaler"])
    r.step, r.metrics = int(state["step"]), dict(state.get("metrics") or {})
    r.best = float(r.metrics.get("best_val_acc", -1.0))
    r.start_epoch = int(state["epoch"]) + (1 if state["epoch_complete"] else 0)
    if state.get("stage"):  # a stage whose data changes (pseudo-labels) rebuilds its loader as it was
        r.train_loader = r.stage.load_state_dict(state["stage"], r.ctx) or r.train_loader
    if state.get("validation_owed") and r.val_loader is not None:
        r.owed_validation = int(state["epoch"])
    if not state["epoch_complete"]:
        r.resume_mid_epoch = True
        r.train_loader.set_epoch(r.start_epoch)
        r.train_loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    log.info("resumed from %s at step %d (epoch %d)", r.ckpt_dir / "last.pt", r.step, r.start_epoch)


def _wrap(net: nn.Module, cfg: Config, env: Any) -> nn.Module:
    if cfg.train.compile:
        net = torch.compile(net)
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            broadcast_buffers=not cfg.train.freeze_bn)
    return net


def train_one_epoch(r: Run, epoch: int, bar: Any = None) -> None:
    """Optimizer steps of `epoch` up to its end or train.stop_at_step; a checkpoint every train.ckpt_every."""
    cfg, env, accum = r.cfg, r.ctx.env, r.schedule.grad_accum
    with torch.random.fork_rng(devices=[]):  # whatever the stage draws, the training stream stays the same
        update = r.stage.begin_epoch(r.net, epoch, r.schedule, r.ctx)
    if update is not None:
        r.train_loader = update.loader
        r.runlog.event("stage", r.step, **update.event)
    if not (r.resume_mid_epoch and epoch == r.start_epoch):
        r.train_loader.set_epoch(epoch)
    r.stage.train_mode(r.model, cfg)
    batches = iter(r.train_loader)
    window = r.window
    while r.step < min(r.schedule.epoch_end(epoch), r.schedule.stop_at):
        # the loader may draw from torch's global RNG (DataLoader seeds its workers from it when an epoch's
        # iterator starts): fork it so dropout & co. see the same stream whether or not a run was resumed
        with torch.random.fork_rng(devices=[]):
            micro = list(itertools.islice(batches, accum))
        if len(micro) < accum:
            raise CellioError(f"the train loader ran dry at step {r.step}: epoch {epoch} yielded fewer than "
                              f"{r.schedule.steps_per_epoch * accum} batches although len(loader)="
                              f"{len(r.train_loader)}")
        for i, batch in enumerate(micro):
            sync = r.net.no_sync() if env.distributed and i < accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast(env.device, r.ctx.dtype):
                    out = r.stage.step(r.net, batch, r.ctx)
                r.scaler.scale(out.loss / accum).backward()
            window.add_micro_batch(out.loss, out.scores, out.target, accum)
            r.seen += len(batch["label"])
        _optimizer_step(r)
        window.end_step()
        if bar is not None:
            bar.update(1)
        if r.step % cfg.train.log_every == 0 or r.step == r.schedule.stop_at:
            stats = {**window.flush(env), "epoch": epoch, "lr": r.sched.get_last_lr()[0], "images_per_s":
                     r.seen * env.world_size / max(time.perf_counter() - r.t0, 1e-9)}
            r.runlog.event("train", r.step, **stats)
            if bar is not None:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.2f}")
            r.metrics.update(train_loss=stats["loss"], train_acc=stats["acc"])
        if env.is_main and cfg.train.ckpt_every and r.step % cfg.train.ckpt_every == 0:
            # at an epoch end this comes before the epoch's validation (in `run`): the checkpoint says it is owed,
            # so that a run killed in between validates that epoch when resumed
            complete = r.step == r.schedule.epoch_end(epoch)
            save_checkpoint(r.ckpt_dir / "last.pt", r.state(epoch, epoch_complete=complete, loader=r.train_loader,
                                                            validation_owed=r.validation_due(epoch, complete)))


def _optimizer_step(r: Run) -> None:
    if r.cfg.optim.grad_clip > 0:
        r.scaler.unscale_(r.opt)
        nn.utils.clip_grad_norm_([p for p in r.model.parameters() if p.requires_grad], r.cfg.optim.grad_clip)
    r.scaler.step(r.opt)
    r.scaler.update()
    r.opt.zero_grad(set_to_none=True)
    r.sched.step()
    r.step += 1


@torch.no_grad()
def validate(net: nn.Module, stage: Stage, loader: Any, ctx: StageContext) -> dict[str, float]:
    """Loss and accuracy on the held-out experiments, overall and per cell type (summed over ranks)."""
    from tqdm.auto import tqdm

    net.eval()
    meter = ClassificationMeter(ctx.store.layout.cell_types)
    show = ctx.cfg.train.progress and ctx.env.is_main
    for batch in tqdm(loader, total=len(loader), desc="validate", leave=False, disable=not show):
        with autocast(ctx.env.device, ctx.dtype):
            out = stage.step(net, batch, ctx)
        meter.update(out.scores.float(), out.target, batch["cell_type"], out.loss)
    return meter.summary(ctx.env, len(ctx.class_map))


def record_validation(r: Run, epoch: int, val: dict[str, float]) -> None:
    """Log one validation (event + CSV row); save the best checkpoint when it beats the best so far."""
    elapsed = time.perf_counter() - r.t0
    r.metrics.update(val)
    r.runlog.event("val", r.step, epoch=epoch, **val)
    r.runlog.row({"epoch": epoch, "step": r.step, "lr": r.sched.get_last_lr()[0], "elapsed_s": elapsed,
                  "images_per_s": r.seen * r.ctx.env.world_size / max(elapsed, 1e-9), **r.metrics})
    if val["val_acc"] > r.best:
        r.best = r.metrics["best_val_acc"] = val["val_acc"]
        if r.ctx.env.is_main:
            save_checkpoint(r.ckpt_dir / "best.pt", r.state(epoch, epoch_complete=True, loader=None))
