"""Training-step throughput per model, and whether the loader is the bottleneck.

For each (device, model, crop, batch) row, two timings of the same optimizer step (forward, backward, AdamW):
  resident  batches already in device memory (the model's ceiling);
  loader    batches pulled from cellio.create_loader as training does.
ratio = loader step time / resident step time: ~1.0 means the loader keeps up (target <= 1.05 on a GPU).

    python benchmarks/train_step.py                                  # CPU rows on a synthetic store
    python benchmarks/train_step.py --store /data/rxrx1.zarr --device cuda --backend dali
    python benchmarks/train_step.py --quick                          # seconds, for a smoke check

CUDA rows (DenseNet-121 at 224 and 512 px, bf16, channels_last) run only when torch sees a GPU; without one they
are skipped and reported as skipped, never estimated. Results: benchmarks/results/train_step.csv, .png, and
train_step_env.json (versions, CPU, GPU, arguments). Medians over --repeats after --warmup steps.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cellio  # noqa: E402
from trainer.training.labels import ClassMap  # noqa: E402
from trainer.training.models import create_model  # noqa: E402

CPU_ROWS = [("densenet_tiny", 128, 16), ("perchannel_tiny", 128, 16), ("densenet121", 128, 8)]
CUDA_ROWS = [("densenet121", 224, 64), ("densenet121", 512, 16), ("densenet161", 512, 16),
             ("perchannel_densenet121", 224, 32)]


@dataclass
class Row:
    device: str
    model: str
    crop: int
    batch: int
    amp: str
    backend: str
    workers: int
    resident_ms: float
    loader_ms: float
    ratio: float
    resident_img_s: float
    loader_img_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, class_map: ClassMap, device: torch.device,
             dtype: torch.dtype | None, channels_last: bool):
    def step(batch: dict[str, torch.Tensor]) -> None:
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ct = batch["cell_type"].to(device, non_blocking=True)
        y = class_map.encode(batch["label"].to(device, non_blocking=True))
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
        with ctx:
            loss = F.cross_entropy(model(x, ct).float(), y, ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _time_steps(step, batches, n: int, device: torch.device) -> float:
    """Seconds per step over n steps pulled from the iterator `batches`."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(next(batches))
    _sync(device)
    return (time.perf_counter() - t0) / n


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_row(store, class_map: ClassMap, name: str, crop: int, batch: int, device: torch.device, args) -> Row:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    channels_last = device.type == "cuda"
    model = create_model(name, num_classes=len(class_map), in_chans=store.image_shape[-1],
                         num_cell_types=len(store.layout.cell_types)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = _step_fn(model, opt, class_map, device, dtype, channels_last)
    loader = cellio.create_loader(store, batch, train=True, augment=args.augment, crop_size=crop,
                                  backend=args.backend, device=device.type, num_workers=args.num_workers,
                                  seed=0)
    stream = _forever(loader)
    resident = [{k: v.to(device) for k, v in next(stream).items()} for _ in range(min(4, args.steps))]

    def cycle():
        while True:
            yield from resident

    res, lod = [], []
    _time_steps(step, cycle(), args.warmup, device)
    _time_steps(step, stream, args.warmup, device)
    for _ in range(args.repeats):  # interleaved so drift (a busy neighbour) hits both sides alike
        res.append(_time_steps(step, cycle(), args.steps, device))
        lod.append(_time_steps(step, stream, args.steps, device))
    r, ld = statistics.median(res), statistics.median(lod)
    return Row(device.type, name, crop, batch, "bf16" if dtype else "fp32", args.backend, args.num_workers,
               r * 1e3, ld * 1e3, ld / r, batch / r, batch / ld)


def _store(args) -> tuple[object, str]:
    if args.store:
        return cellio.open_store(args.store), args.store
    from cellio.testing import make_store

    root = Path(args.synth_dir or tempfile.mkdtemp(prefix="cellio_train_step_"))
    path = root / f"synth_{args.synth_size}.zarr"
    if path.exists():
        return cellio.open_store(path), str(path)
    print(f"synthesizing a {args.synth_size}px store at {path} ...", flush=True)
    return make_store(path, size=(args.synth_size, args.synth_size), classes=16,
                      train_experiments_per_cell_type=1), str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", help="cellio store (default: a synthetic one)")
    p.add_argument("--synth-size", type=int, default=160, help="side of the synthetic sites (>= largest crop)")
    p.add_argument("--synth-dir", help="where the synthetic store is kept between runs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU rows, plus CUDA rows when a GPU exists")
    p.add_argument("--models", help="comma list overriding the CPU rows' models (crop/batch from --crop/--batch)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backend", choices=("torch", "dali"), default="torch")
    p.add_argument("--augment", default="d4_shift")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny models, 64 px, 2 steps x 2 repeats")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_rows = [(m, args.crop, args.batch) for m in args.models.split(",")] if args.models else CPU_ROWS
    if args.quick:
        cpu_rows = [("densenet_tiny", 64, 8), ("perchannel_tiny", 64, 8)]
        args.steps, args.repeats, args.warmup, args.synth_size = 2, 2, 1, max(96, min(args.synth_size, 96))
    has_cuda = torch.cuda.is_available()
    plan: list[tuple[torch.device, str, int, int]] = []
    if args.device in ("auto", "cpu"):
        plan += [(torch.device("cpu"), *r) for r in cpu_rows]
    skipped = None
    if args.device in ("auto", "cuda"):
        if has_cuda:
            plan += [(torch.device("cuda"), *r) for r in CUDA_ROWS]
        else:
            skipped = "CUDA rows skipped: torch sees no CUDA device (no GPU figures are estimated)"
            print(skipped)
    need = max(c for _, _, c, _ in plan) if plan else 0
    if not args.store and args.synth_size < need + 32:
        args.synth_size = need + 32  # room for the shift margin of the largest crop
    store, store_path = _store(args)
    class_map = ClassMap.from_sites(store.sites, include_controls=True)
    rows: list[Row] = []
    for device, name, crop, batch in plan:
        print(f"{device.type:4s} {name:24s} crop {crop:4d} batch {batch:3d} ...", end=" ", flush=True)
        row = bench_row(store, class_map, name, crop, batch, device, args)
        rows.append(row)
        print(f"resident {row.resident_img_s:8.1f} img/s   loader {row.loader_img_s:8.1f} img/s   "
              f"ratio {row.ratio:5.2f}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print()
    header = f"{'device':6s} {'model':24s} {'crop':>4s} {'batch':>5s} {'amp':>5s} {'resident ms':>11s} " \
             f"{'loader ms':>9s} {'ratio':>6s} {'img/s res':>9s} {'img/s ldr':>9s}"
    print(header)
    for r in rows:
        print(f"{r.device:6s} {r.model:24s} {r.crop:4d} {r.batch:5d} {r.amp:>5s} {r.resident_ms:11.1f} "
              f"{r.loader_ms:9.1f} {r.ratio:6.2f} {r.resident_img_s:9.1f} {r.loader_img_s:9.1f}")
    with open(out / "train_step.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    env = {"python": platform.python_version(), "torch": torch.__version__, "cellio": cellio.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if has_cuda else None,
           "store": store_path, "image_shape": list(store.image_shape), "args": vars(args), "skipped": skipped,
           "load_average": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import nvidia.dali as dali

        env["dali"] = dali.__version__
    except ImportError:
        env["dali"] = None
    (out / "train_step_env.json").write_text(json.dumps(env, indent=1, default=str))
    if rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{r.device}\n{r.model}\n{r.crop}px b{r.batch}" for r in rows]
        xs = range(len(rows))
        fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 4))
        ax.bar([x - 0.2 for x in xs], [r.resident_img_s for r in rows], 0.4, label="batches resident")
        ax.bar([x + 0.2 for x in xs], [r.loader_img_s for r in rows], 0.4, label="cellio loader")
        for x, r in zip(xs, rows):
            ax.text(x, max(r.resident_img_s, r.loader_img_s), f"x{r.ratio:.2f}", ha="center", va="bottom")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("images / s (train step)")
        ax.set_yscale("log")
        ax.set_title("train step: loader vs resident batches (ratio = loader / resident step time)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "train_step.png", dpi=120)
    print(f"\nwrote {out / 'train_step.csv'}, {out / 'train_step.png'}, {out / 'train_step_env.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
