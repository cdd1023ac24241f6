"""A row's own process: the benchmark's parent drives it over a pipe and measures its process tree from outside.

    server = RowServer(spec)                  # spawns python, imports the row's library, waits until ready
    server.call("check")                      # one deterministic epoch: every site's fingerprint
    server.call("warmup")                     # a fresh loader's first epoch: time to the first batch
    server.call("epoch", epoch=1)             # one timed epoch: seconds, sites
    server.call("train_setup", train=TrainSpec(...)); server.call("train_block", steps=8)
    server.close()

One process per (row, W) keeps the measurements apart: the tree's CPU time and memory are that row's alone (its
DataLoader/DALI workers, its threads), nothing a previous row left in the heap inflates its peak, and a row that
crashes is reported with its error while the others go on. `spec=None` makes a process of no row: the "resident"
one (the same training step on one batch already in memory, no loader at all) or the checker
(`call("check", spec=...)` for any row).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from _peer_rows import REQUIRES, RowSpec, open_loader, run_epoch


PRELOAD = {"wds_lz4": ("webdataset", "lz4.frame"), "spdl": ("spdl.io", "spdl.pipeline"), "litdata": ("litdata",),
           "cellio_torch": ("cellio.loading.loader",),
           "cellio_dali": ("cellio.loading.loader", "cellio.loading.pipeline", "nvidia.dali.fn")}


class RowError(RuntimeError):
    """A row's process raised: the message carries its exception and the last lines of its traceback."""


@dataclass(frozen=True)
class TrainSpec:
    """The training step every row feeds: the CPU plan's (trainer/plan.py: densenet_tiny, 224 px crops of a 512 px
    site, batch 32, one torch thread per core, channels_last, AdamW) on (B, 6, S, S) batches."""

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    labels: np.ndarray        # (N,) class index per store row
    cell_types: np.ndarray    # (N,) index into cellio.schema.CELL_TYPES per store row
    batch: int
    crop: int
    threads: int              # torch intra-op threads of every training process (resident included)
    channels_last: bool = True
    lr: float = 2e-3
    seed: int = 0


class _Row:
    def __init__(self, spec: RowSpec | None):
        self.spec = spec
        self.loader: Any = None
        self.stream: Iterator[tuple[Any, Any]] | None = None
        self.step: Any = None

    # -- loading ---------------------------------------------------------------------------------------------------
    def check(self, spec: RowSpec | None = None,
              truth: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> dict[str, Any]:
        """One deterministic epoch of `spec` (default: this process's row) with the augmentation off; fingerprints
        recovered with truth = (mean, std), the store's statistics (default: the spec's)."""
        spec = dataclasses.replace(spec or self.spec, check=True)
        t0 = time.perf_counter()
        loader = open_loader(spec)
        try:
            r = run_epoch(loader, spec, 0, t0, truth=truth)
        finally:
            loader.close()
        ids = np.array(sorted(r.fingerprints or {}), dtype=np.int64)
        fps = np.stack([r.fingerprints[int(i)] for i in ids]) if len(ids) else np.zeros((0, 6, 3), np.int64)
        return {"ids": ids, "fingerprints": fps, "residual": r.residual, "seconds": r.seconds}

    def warmup(self) -> dict[str, Any]:
        assert self.spec is not None
        t0 = time.perf_counter()
        self.loader = open_loader(self.spec)
        r = run_epoch(self.loader, self.spec, 0, t0)
        return {"first_batch_s": r.first_batch_s, "seconds": r.seconds, "sites": r.sites}

    def epoch(self, epoch: int) -> dict[str, Any]:
        assert self.spec is not None and self.loader is not None, "warmup first"
        r = run_epoch(self.loader, self.spec, epoch)
        return {"seconds": r.seconds, "sites": r.sites, "start_s": r.first_batch_s}

    # -- training --------------------------------------------------------------------------------------------------
    def _forever(self) -> Iterator[tuple[Any, Any]]:
        e = 0
        while True:  # a training loader drops the partial last batch (BatchNorm needs more than one sample)
            yield from ((i, x) for i, x in self.loader.epoch(e) if len(i) == self.spec.batch)
            e += 1

    def train_setup(self, train: TrainSpec, warmup_steps: int) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        from trainer.training.models import create_model

        torch.set_num_threads(train.threads)
        torch.manual_seed(train.seed)
        model = create_model(train.model, num_classes=train.num_classes, **train.model_kwargs)
        if train.channels_last:  # as trainer/train.py does with train.channels_last (the CPU plan sets it)
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=train.lr)
        labels = torch.as_tensor(train.labels, dtype=torch.int64)
        cell_types = torch.as_tensor(train.cell_types, dtype=torch.int64)

        def step(ids: Any, images: Any) -> None:
            ids = torch.as_tensor(ids, dtype=torch.int64)
            loss = F.cross_entropy(model(images, cell_types[ids]), labels[ids])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step = step
        t0 = time.perf_counter()
        if self.spec is None:  # resident: one batch in memory, the same one every step
            g = torch.Generator().manual_seed(train.seed)
            batch = (torch.arange(train.batch) % len(labels),
                     torch.randn(train.batch, 6, train.crop, train.crop, generator=g))
            self.stream = iter(lambda: batch, None)
        else:
            self.loader = open_loader(self.spec)
            self.stream = self._forever()
        first = None
        for _ in range(warmup_steps):
            self.step(*next(self.stream))
            first = first if first is not None else time.perf_counter() - t0
        return {"first_step_s": first}

    def train_block(self, steps: int, skip: int = 0) -> dict[str, Any]:
        """Seconds per step over `steps` steps, after pulling `skip` batches without a step: what the loader
        prefetched while this process waited for its turn is gone, so the block starts from the steady state."""
        assert self.step is not None and self.stream is not None, "train_setup first"
        for _ in range(skip):
            next(self.stream)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(*next(self.stream))
        return {"seconds_per_step": (time.perf_counter() - t0) / steps}

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()


def _serve(conn: Any, spec: RowSpec | None, repo: str) -> None:
    import importlib
    import sys

    sys.path.insert(0, repo)
    # a spawned child inherits "spawn" as its default start method; give the row's library the platform's default
    # (fork on Linux), as in a script run from the shell
    mp.set_start_method("fork", force=True)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("spdl").setLevel(logging.WARNING)  # SPDL logs every pipeline's stage statistics at INFO
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        # every module a row uses, imported before "ready" so that no timing (first batch included) holds an import
        for mod in ("torch", "torchvision.transforms.v2", "trainer.training.models",
                    *((REQUIRES[spec.row],) if spec is not None else ()), *PRELOAD.get(getattr(spec, "row", ""), ())):
            importlib.import_module(mod)
        if spec is not None and spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)
        conn.send({"ok": True, "pid": os.getpid()})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records the row as failed
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    row = _Row(spec)
    while True:
        cmd, kw = conn.recv()
        if cmd == "stop":
            break
        try:
            conn.send({"ok": True, **getattr(row, cmd)(**kw)})
        except BaseException as exc:  # noqa: BLE001
            tb = traceback.format_exc().strip().splitlines()
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": "\n".join(tb[-8:])})
    try:
        row.close()
    finally:
        conn.send({"ok": True})


class RowServer:
    """Parent side: a spawned process serving one row (or the resident step with spec=None)."""

    def __init__(self, spec: RowSpec | None, repo: str, timeout: float = 900.0):
        ctx = mp.get_context("spawn")
        self.spec, self.timeout = spec, timeout
        self.name = spec.row if spec is not None else "resident"
        self.conn, child = ctx.Pipe()
        # not a daemon: its DataLoader/DALI workers are child processes of its own
        self.proc = ctx.Process(target=_serve, args=(child, spec, repo), name=f"peers-{self.name}")
        self.proc.start()
        child.close()
        self.pid: int = self.proc.pid  # type: ignore[assignment]
        self.ready = self._recv()

    def _recv(self) -> dict[str, Any]:
        if not self.conn.poll(self.timeout):
            raise RowError(f"{self.name}: no answer within {self.timeout:.0f} s")
        try:
            reply = self.conn.recv()
        except EOFError:
            raise RowError(f"{self.name}: its process died (exit code {self.proc.exitcode})") from None
        if not reply.get("ok"):
            raise RowError(f"{self.name}: {reply.get('error')}\n{reply.get('traceback', '')}".rstrip())
        return reply

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        self.conn.send((cmd, kw))
        return self._recv()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop", {}))
                if self.conn.poll(60):
                    self.conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
