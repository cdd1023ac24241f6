"""The training loop: config -> cellio loaders -> model -> a plain loop -> checkpoints. Read it top to bottom.

    python -m trainer.train --config trainer/recipes/smoke_cpu.yaml data.store=PATH out=DIR optim.lr=3e-4
    torchrun --nproc_per_node 8 -m trainer.train --config trainer/recipes/densenet161_gpu.yaml data.store=PATH

Stages (train.stage):
  single             any model end to end (the winners' 6-channel DenseNet).
  perchannel_stage1  a per-channel model's six extractors, each with its own classifier on its own channel.
  fusion_stage2      the fusion head on stage-1 extractors (train.init_from); frozen extractors + cache_features
                     compute the features once into a Zarr array and train the head on them in seconds.
Every stage writes OUT/checkpoints/{last,best}.pt holding the whole model (loadable by load_for_inference).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import cellio
from cellio.errors import CellioError, ConfigError
from cellio.schema import CELL_TYPES

from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .config import Config, load_config, save_config
from .folds import fold_experiments, make_folds
from .labels import IGNORE_INDEX, ClassMap
from .losses import create_loss
from .models import is_perchannel

__all__ = ["run", "main", "Env", "evaluate"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# process environment: device, DDP, seeds, AMP


@dataclass
class Env:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_env(cfg: Config) -> Env:
    """Device from train.device; under torchrun (WORLD_SIZE > 1) a process group: NCCL on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device': cuda requested but torch sees no CUDA device")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Env(rank, world_size, local_rank, device)


def seed_everything(seed: int, deterministic: bool) -> None:
    # the same seed on every rank: identical initial weights (DDP also broadcasts them); the loader draws its
    # own per-sample randomness from (seed, epoch, position), independent of rank count
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    amp = cfg.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# data


def make_loader(cfg: Config, store: Any, env: Env, experiments: list[str], *, train: bool) -> Any:
    """A cellio loader over the given train experiments; train mode drops the ragged tail, eval keeps every site."""
    crop = cfg.data.crop_size if train or not cfg.data.val_crop_size else cfg.data.val_crop_size
    bs = cfg.data.batch_size if train or not cfg.data.val_batch_size else cfg.data.val_batch_size
    return cellio.create_loader(
        store, bs, train=train, augment=cfg.data.augment, crop_size=crop,
        normalize=cfg.data.normalize, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed,
        backend=cfg.data.backend, device="cuda" if env.device.type == "cuda" else "cpu",
        num_workers=cfg.data.num_workers, datasets=("train",), experiments=experiments,
        cell_types=cfg.data.cell_types or None, controls=cfg.data.include_controls,
        last_batch="drop" if train else "partial")


def split_experiments(cfg: Config, sites: Any) -> tuple[list[str], list[str], dict[str, int]]:
    folds = make_folds(sites, cfg.data.n_folds, cfg.data.fold_seed)
    if cfg.data.cell_types:  # a per-cell-type model trains and validates on its own cell types only
        unknown = sorted(set(cfg.data.cell_types) - set(CELL_TYPES))
        if unknown:
            raise ConfigError(f"config key 'data.cell_types': unknown {unknown}; expected a subset of {CELL_TYPES}")
        keep = set(sites.loc[sites["cell_type"].isin(cfg.data.cell_types), "experiment"])
        folds = {e: f for e, f in folds.items() if e in keep}
    train_exps, val_exps = fold_experiments(folds, cfg.data.val_fold)
    if not train_exps:
        raise ConfigError(f"config key 'data.val_fold': fold {cfg.data.val_fold} leaves no train experiment")
    return train_exps, val_exps, folds


# ---------------------------------------------------------------------------------------------------------------
# model, stage, optimizer, schedule


def configure_stage(model: nn.Module, cfg: Config) -> None:
    """requires_grad per stage; modules a stage does not train never receive gradients (DDP-safe)."""
    stage = cfg.train.stage
    if stage != "single" and not is_perchannel(model):
        raise ConfigError(f"config key 'train.stage': {stage} needs a per-channel model (e.g. perchannel_tiny), "
                          f"found model.name={cfg.model.name!r}")
    if not is_perchannel(model):
        return
    frozen: list[nn.Module] = []
    if stage == "perchannel_stage1":
        frozen = [model.head]                       # stage 1 trains extractors + their own channel heads
    elif stage == "fusion_stage2":
        frozen = [model.channel_heads] + ([model.extractors] if cfg.train.freeze_extractors else [])
    else:
        frozen = [model.channel_heads]              # end to end through the fusion head
    for module in frozen:
        module.requires_grad_(False)


def set_train_mode(model: nn.Module, cfg: Config) -> None:
    """model.train(), but frozen extractors (and every BatchNorm with freeze_bn) keep their running statistics."""
    model.train()
    if is_perchannel(model) and cfg.train.stage == "fusion_stage2" and cfg.train.freeze_extractors:
        model.extractors.eval()
    if cfg.train.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # norms and biases are not weight-decayed (standard for AdamW on conv nets)
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


def build_scheduler(cfg: Config, opt: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine to min_lr_ratio * lr, over optimizer steps."""
    warmup = cfg.optim.warmup_steps or int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    floor = cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def compute_loss(model: nn.Module, batch: dict[str, torch.Tensor], class_map: ClassMap, loss_fn: nn.Module,
                 cfg: Config, env: Env) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, targets). Stage 1 averages the six per-channel losses; its logits are (B, 6, C)."""
    x = batch["image"].to(env.device, non_blocking=True)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cell_type = batch["cell_type"].to(env.device, non_blocking=True)
    target = class_map.encode(batch["label"].to(env.device))
    logits = model(x, cell_type)
    if logits.ndim == 3:  # stage 1 (_Stage1Forward): one classifier per channel
        loss = torch.stack([loss_fn(logits[:, c], target) for c in range(logits.shape[1])]).mean()
    else:
        loss = loss_fn(logits, target)
    return loss, logits, target


class _Stage1Forward(nn.Module):
    """Stage 1: forward = the per-channel classifiers, (B, C, classes); DDP and compile wrap this forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_channels(x)


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def _reduce(t: torch.Tensor, env: Env) -> torch.Tensor:
    if env.distributed:
        t = t.to(env.device if env.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
    return t.cpu()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, class_map: ClassMap, loss_fn: nn.Module, cfg: Config, env: Env,
             dtype: torch.dtype | None) -> dict[str, float]:
    """Loss and accuracy on the held-out experiments, overall and per cell type (summed over ranks)."""
    model.eval()
    n_types = len(CELL_TYPES)
    correct = torch.zeros(n_types, dtype=torch.float64)
    total = torch.zeros(n_types, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    for batch in loader:
        with autocast(env.device, dtype):
            loss, logits, target = compute_loss(model, batch, class_map, loss_fn, cfg, env)
        if logits.ndim == 3:  # stage 1: mean of the six channel classifiers' probabilities
            logits = logits.float().softmax(-1).mean(1)
        keep = (target != IGNORE_INDEX).cpu()
        pred = logits.argmax(-1).cpu()
        ct = batch["cell_type"].cpu()
        hit = (pred == target.cpu()) & keep
        correct += torch.bincount(ct[keep], weights=hit[keep].double(), minlength=n_types)
        total += torch.bincount(ct[keep], minlength=n_types).double()
        loss_sum += float(loss) * int(keep.sum())
    stats = _reduce(torch.cat([correct, total, loss_sum]), env)
    correct, total, loss_sum = stats[:n_types], stats[n_types:2 * n_types], stats[-1]
    n = float(total.sum())
    out = {"val_loss": float(loss_sum) / max(n, 1.0), "val_acc": float(correct.sum()) / max(n, 1.0),
           "val_n": n, "chance": 1.0 / len(class_map)}
    for i, name in enumerate(CELL_TYPES):
        out[f"val_acc_{name}"] = float(correct[i] / total[i]) if total[i] > 0 else float("nan")
    return out


# ---------------------------------------------------------------------------------------------------------------
# logs


class RunLog:
    """metrics.csv (one row per validation), log.jsonl (every event) and TensorBoard; rank 0 only."""

    CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_n", "chance",
                  *(f"val_acc_{c}" for c in CELL_TYPES), "images_per_s", "elapsed_s")

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.out, self.enabled, self.tb = out, enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard logs are skipped (pip install tensorboard)")

    def event(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": kind, "step": step, **values, "time": time.time()}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def row(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: values.get(k, "") for k in self.CSV_FIELDS})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------------------------
# the run


def _unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model = model.model if isinstance(model, _Stage1Forward) else model
    return getattr(model, "_orig_mod", model)  # torch.compile


def _checkpoint_state(model: nn.Module, opt: Any, sched: Any, scaler: Any, loader: Any, cfg: Config,
                      class_map: ClassMap, epoch: int, step: int, epoch_complete: bool,
                      metrics: dict[str, Any]) -> dict[str, Any]:
    return {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "loader": loader.state_dict() if loader is not None else None,
            "rng": rng_state(), "config": cfg.to_dict(), "classes": class_map.to_dict(), "epoch": epoch,
            "step": step, "epoch_complete": epoch_complete, "metrics": metrics}


def record_validation(val: dict[str, Any], metrics: dict[str, Any], best: float, *, runlog: Any, step: int,
                      epoch: int, row: dict[str, Any], is_main: bool, best_path: Path,
                      state: Any) -> float:
    """Log one validation (event + CSV row) and, when it beats `best`, save `state()` as the best checkpoint.
    Returns the new best accuracy. Shared by the image loop and the cached-feature head loop."""
    metrics.update(val)
    runlog.event("val", step, epoch=epoch, **val)
    runlog.row({"epoch": epoch, "step": step, **row, **metrics})
    if val["val_acc"] > best:
        best = metrics["best_val_acc"] = val["val_acc"]
        if is_main:
            save_checkpoint(best_path, state())
    return best


def run(cfg: Config) -> dict[str, Any]:
    """Train as `cfg` says; returns the final metrics (rank 0's view; identical on every rank)."""
    env = setup_env(cfg)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if env.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    if not cfg.data.store:
        raise ConfigError("config key 'data.store': no store given; pass data.store=PATH (a cellio ingest output)")
    store = cellio.open_store(cfg.data.store)
    sites = store.sites
    class_map = ClassMap.from_sites(sites, cfg.data.include_controls)
    train_exps, val_exps, folds = split_experiments(cfg, sites)
    log.info("%d classes; train experiments %s; held out %s", len(class_map), train_exps, val_exps)
    if env.is_main:  # which experiments this run held out, for prediction and reports
        (out / "folds.json").write_text(json.dumps({"folds": folds, "val_fold": cfg.data.val_fold,
                                                    "train": train_exps, "val": val_exps}, indent=1))

    model = build_model(cfg, class_map)
    if cfg.train.init_from:
        init = load_checkpoint(cfg.train.init_from)
        if ClassMap.from_dict(init["classes"]) != class_map:
            raise ConfigError(f"train.init_from {cfg.train.init_from!r}: its classes differ from this run's "
                              "(different store or data.include_controls)")
        model.load_state_dict(init["model"])
    configure_stage(model, cfg)
    model.to(env.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg, env.device)
    loss_fn = create_loss(cfg.loss.name, cfg.loss.label_smoothing)
    runlog = RunLog(out, env.is_main, cfg.train.tensorboard)
    val_loader = make_loader(cfg, store, env, val_exps, train=False) if val_exps else None

    if cfg.train.stage == "fusion_stage2" and cfg.train.freeze_extractors and cfg.train.cache_features:
        from .features import train_head_on_cached_features

        result = train_head_on_cached_features(model, cfg, env, store, class_map, train_exps, val_exps,
                                               loss_fn, runlog, dtype)
        runlog.close()
        return result

    train_loader = make_loader(cfg, store, env, train_exps, train=True)
    accum = cfg.optim.grad_accum
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch < 1:
        raise ConfigError(f"one epoch has {len(train_loader)} batches per rank, fewer than optim.grad_accum={accum}")
    total_steps = cfg.train.max_steps or cfg.optim.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)

    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    step, start_epoch, best, metrics = 0, 0, -1.0, {}
    last = ckpt_dir / "last.pt"
    resumed_mid_epoch = False
    if cfg.train.resume and last.exists():
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, metrics = int(state["step"]), dict(state.get("metrics") or {})
        best = float(metrics.get("best_val_acc", -1.0))
        start_epoch = int(state["epoch"]) + (1 if state["epoch_complete"] else 0)
        if not state["epoch_complete"]:
            resumed_mid_epoch = True
            train_loader.set_epoch(start_epoch)
            train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (epoch %d)", last, step, start_epoch)

    net: nn.Module = model
    if cfg.train.stage == "perchannel_stage1":
        net = _Stage1Forward(model)
    if cfg.train.compile:
        net = torch.compile(net)
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            broadcast_buffers=not cfg.train.freeze_bn)

    stop_at = min(cfg.train.stop_at_step or total_steps, total_steps)
    bar = None
    if env.is_main and cfg.train.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop_at, initial=step, desc=f"train {cfg.train.stage}", unit="step")
    t0, seen = time.perf_counter(), 0
    window = torch.zeros(3, dtype=torch.float64)  # loss sum (per step), hits, labelled rows since the last log
    window_steps = 0
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        if step >= stop_at:
            break
        if not (resumed_mid_epoch and epoch == start_epoch):
            train_loader.set_epoch(epoch)
        set_train_mode(model, cfg)
        batches: Iterator[dict[str, torch.Tensor]] = iter(train_loader)
        # epoch e owns optimizer steps [e * steps_per_epoch, (e + 1) * steps_per_epoch): resumes land exactly
        while step < min((epoch + 1) * steps_per_epoch, stop_at):
            # the loader may draw from torch's global RNG (DataLoader seeds its workers from it when an epoch's
            # iterator starts): fork it so dropout & co. see the same stream whether or not a run was resumed
            with torch.random.fork_rng(devices=[]):
                micro = list(itertools.islice(batches, accum))
            if len(micro) < accum:
                raise CellioError(f"the train loader ran dry at step {step}: epoch {epoch} yielded fewer than "
                                  f"{steps_per_epoch * accum} batches although len(loader)={len(train_loader)}")
            for i, batch in enumerate(micro):
                sync = net.no_sync() if env.distributed and i < accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast(env.device, dtype):
                        loss, logits, target = compute_loss(net, batch, class_map, loss_fn, cfg, env)
                    scaler.scale(loss / accum).backward()
                with torch.no_grad():
                    pred = (logits.float().softmax(-1).mean(1) if logits.ndim == 3 else logits).argmax(-1)
                    keep = target != IGNORE_INDEX
                    window += torch.tensor([float(loss.detach()) / accum, int(((pred == target) & keep).sum()),
                                            int(keep.sum())], dtype=torch.float64)
                seen += batch["image"].shape[0]
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            window_steps += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.train.log_every == 0 or step == stop_at:
                totals = _reduce(window.clone(), env)  # mean over ranks: the global batch's loss
                train_stats = {"loss": float(totals[0]) / (window_steps * env.world_size),
                               "acc": float(totals[1]) / max(float(totals[2]), 1.0), "epoch": epoch,
                               "lr": sched.get_last_lr()[0],
                               "images_per_s": seen * env.world_size / max(time.perf_counter() - t0, 1e-9)}
                runlog.event("train", step, **train_stats)
                if bar is not None:
                    bar.set_postfix(loss=f"{train_stats['loss']:.3f}", acc=f"{train_stats['acc']:.2f}")
                metrics.update(train_loss=train_stats["loss"], train_acc=train_stats["acc"])
                window.zero_()
                window_steps = 0
            if env.is_main and cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0:
                save_checkpoint(last, _checkpoint_state(net, opt, sched, scaler, train_loader, cfg, class_map,
                                                        epoch, step, step == (epoch + 1) * steps_per_epoch,
                                                        metrics))
        epoch_complete = step == (epoch + 1) * steps_per_epoch
        finished = step >= total_steps  # the schedule's end validates even mid-epoch (train.max_steps)
        if val_loader is not None and ((epoch_complete and (epoch + 1) % cfg.train.val_every == 0) or finished):
            val = evaluate(net, val_loader, class_map, loss_fn, cfg, env, dtype)
            elapsed = time.perf_counter() - t0
            best = record_validation(
                val, metrics, best, runlog=runlog, step=step, epoch=epoch, is_main=env.is_main,
                row={"lr": sched.get_last_lr()[0], "elapsed_s": elapsed,
                     "images_per_s": seen * env.world_size / max(elapsed, 1e-9)},
                best_path=ckpt_dir / "best.pt",
                state=lambda: _checkpoint_state(net, opt, sched, scaler, None, cfg, class_map, epoch, step, True,
                                                metrics))
        if env.is_main:
            save_checkpoint(last, _checkpoint_state(net, opt, sched, scaler, train_loader, cfg, class_map,
                                                    epoch, step, epoch_complete, metrics))
    if bar is not None:
        bar.close()
    runlog.close()
    metrics.update(step=step, epoch=epoch, stopped_early=step < total_steps, num_classes=len(class_map))
    if env.distributed:
        dist.barrier()
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML recipe (trainer/recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.store=PATH")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        metrics = run(cfg)
    except CellioError as exc:
        print(f"trainer.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
