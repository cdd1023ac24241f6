"""The process a run lives in: device and DDP (`Env`), seeds and RNG state, mixed precision, cross-rank sums.

    env = setup_env(cfg)            # cuda:LOCAL_RANK or cpu; a process group under torchrun
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    with autocast(env.device, amp_dtype(cfg, env.device)): ...
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cellio.errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Env", "setup_env", "seed_everything", "rng_state", "set_rng_state", "amp_dtype", "autocast",
           "all_reduce_sum", "unwrap", "in_model_layout"]


@dataclass(frozen=True)
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

    def single(self) -> "Env":
        """This process as if it were alone (rank 0 of 1): for work one rank does for everyone."""
        return Env(0, 1, self.local_rank, self.device)


def setup_env(cfg: "Config") -> Env:
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


def amp_dtype(cfg: "Config", device: torch.device) -> torch.dtype | None:
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    amp = cfg.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def in_model_layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A 4-d batch in the memory format of the model's first convolution: channels_last models
    (train.channels_last, 1.22x faster training on CPU for densenet_tiny, docs/training.md) get
    channels_last inputs at inference too, so no layer converts back and forth."""
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    if x.dim() == 4 and conv is not None and conv.is_contiguous(memory_format=torch.channels_last) \
            and not conv.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def all_reduce_sum(t: torch.Tensor, env: Env) -> torch.Tensor:
    """Sum of `t` over ranks (a CPU tensor back); `t` itself when alone."""
    if env.distributed:
        t = t.to(env.device if env.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
    return t.cpu()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP, torch.compile and a stage's forward wrapper (anything with `.model`)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(getattr(model, "model", None), nn.Module) and getattr(model, "wraps_model", False):
            model = model.model
        else:
            return model
