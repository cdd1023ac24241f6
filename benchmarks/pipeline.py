"""Loader throughput, side by side in one run: sites/s for 224 crops with D4 + shift, and with arbitrary rotation.

Rows (each over the same store / raw set, same batch size and worker count):
  naive       PIL PNG decode of the 6 channel files + torchvision.transforms.v2 in a torch DataLoader
  store_read  the read step alone: SiteSource batches (windows read from the store, params drawn), no augmenting
  torch       cellio.create_loader(backend="torch", device="cpu")    (the pure-torch reference path)
  dali_cpu    cellio.create_loader(backend="dali", device="cpu")     (parallel external_source workers)
  dali_cpu_inline  the same with num_workers=0: the source runs in DALI's thread, store.read's thread pool reads
  dali_gpu / torch_gpu   the same on CUDA, only when a GPU is present (skipped cleanly otherwise)

    python benchmarks/pipeline.py                     # makes benchmarks/data/rxrx1_512{,.zarr,-none.zarr} on first use
    python benchmarks/pipeline.py --repeats 5 --rows dali_cpu,torch --scenarios d4_shift
    python benchmarks/pipeline.py --stores default    # only the store made with the default ingest options

Stores (--stores): "default" is made by `cellio ingest` with its default options (codec and layout: what a user
gets), "none" is the same data uncompressed in one-chunk-per-site files (the fastest possible source); every row
runs on each, with a `store` column in the CSV.

Writes benchmarks/results/pipeline.csv, pipeline.png and pipeline_env.json. Epochs are timed whole (one warm-up
epoch first, then the median of --repeats epochs); the DALI pipeline is reused across epochs as in training.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cellio  # noqa: E402
from cellio.schema import GLOBAL_PIXEL_MEAN, GLOBAL_PIXEL_STD, PATH_COLUMNS  # noqa: E402

ROWS = ("naive", "store_read", "torch", "dali_cpu", "dali_cpu_inline", "dali_gpu", "torch_gpu")
SCENARIOS = {"d4_shift": "d4_shift", "rotate_any": "rotate_any"}


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                           "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                           "numpy": np.__version__, "cellio": cellio.__version__}
    try:
        import nvidia.dali as dali

        env["dali"] = dali.__version__
    except ImportError:
        env["dali"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ingest options of each store; "none-sharded", "lz4-chunked" (the format 1.1 default) and "lz4-tile64" are for
# the layout and codec decision
STORES = {"default": {}, "none": {"codec": "none", "layout": "chunked"}, "none-sharded": {"codec": "none"},
          "lz4-chunked": {"codec": "lz4", "layout": "chunked"}, "lz4-tile64": {"codec": "lz4", "tile": 64}}
DEFAULT_STORES = ("default", "none")


def store_path(base: Path, name: str) -> Path:
    return base if name == "default" else base.with_name(base.stem + f"-{name}.zarr")


def ensure_data(raw: Path, store: Path, sites_hint: int, options: dict[str, Any]) -> None:
    """Synthesize a 512x512 RxRx1-layout set and ingest it with `options`, unless it already exists."""
    if not raw.exists():
        # 8 classes + 2 positive controls + the negative, 2 sites, 4 plates, 8 experiments -> 320 sites
        print(f"synthesizing {raw} ...", flush=True)
        cellio.synthesize(raw, classes=8, train_experiments_per_cell_type=1, test_experiments_per_cell_type=1,
                          size=(512, 512), positive_controls=2, progress=True)
    if not store.exists():
        print(f"ingesting {store} ({options or 'default options'}) ...", flush=True)
        cellio.ingest(raw, store, progress=True, **options)
    n = len(cellio.open_store(store))
    if n < sites_hint:
        print(f"note: the store has {n} sites (< {sites_hint}); figures are per epoch over {n}", flush=True)


# --- the naive baseline ----------------------------------------------------------------------------------------
class NaivePNG:
    """torch Dataset: 6 PNGs per site with PIL, torchvision v2 transforms (what a first attempt looks like)."""

    def __init__(self, raw: Path, paths: list[list[str]], scenario: str, crop: int):
        from torchvision.transforms import v2

        self.raw, self.paths = raw, paths
        geo: list[Any] = [v2.RandomCrop(crop)]
        if scenario == "rotate_any":  # rotate the whole site, then crop (no margin logic in a first attempt)
            geo = [v2.RandomRotation(180), v2.RandomCrop(crop), v2.RandomHorizontalFlip()]
        else:
            geo += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
        import torch

        self.tf = v2.Compose([*geo, v2.ToDtype(torch.float32, scale=False),
                              v2.Normalize(list(GLOBAL_PIXEL_MEAN), list(GLOBAL_PIXEL_STD))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        import torch
        from PIL import Image

        chans = [np.asarray(Image.open(self.raw / p)) for p in self.paths[i]]
        return self.tf(torch.from_numpy(np.stack(chans, axis=0)))


class RandomRot90:
    def __call__(self, x: Any) -> Any:
        import torch

        return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))


def naive_loader(raw: Path, store: Any, scenario: str, crop: int, batch: int, workers: int, limit: int) -> Any:
    from torch.utils.data import DataLoader

    sites = store.sites.iloc[:limit]
    paths = sites[list(PATH_COLUMNS)].to_numpy().tolist()
    ds = NaivePNG(raw, paths, scenario, crop)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False,
                      persistent_workers=workers > 0)


# --- timing ----------------------------------------------------------------------------------------------------
def time_epochs(make_iter: Callable[[], Any], count: Callable[[Any], int], warmup: int, repeats: int,
                sync: Callable[[], None]) -> tuple[float, list[float], int]:
    rates = []
    n = 0
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        n = 0
        for b in make_iter():
            n += count(b)
        sync()
        dt = time.perf_counter() - t0
        if r >= warmup:
            rates.append(n / dt)
    return statistics.median(rates), rates, n


def run_row(row: str, scenario: str, args: argparse.Namespace, store: Any) -> dict[str, Any] | None:
    import torch

    cuda = torch.cuda.is_available()
    if row in ("dali_gpu", "torch_gpu") and not cuda:
        print(f"  {row:16s} {scenario:10s} skipped: no CUDA device", flush=True)
        return None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    count = lambda b: len(b["index"])  # noqa: E731
    common = dict(augment=SCENARIOS[scenario], crop_size=args.crop, datasets=None, seed=0, rank=0, world_size=1,
                  last_batch="partial", prefetch=args.prefetch)
    loader: Any = None
    if row == "naive":
        loader = naive_loader(Path(args.raw), store, scenario, args.crop, args.batch, args.workers, args.naive_sites)
        count = lambda b: len(b)  # noqa: E731
        make_iter = lambda: iter(loader)  # noqa: E731
    elif row == "store_read":
        ld = cellio.create_loader(store, args.batch, backend="torch", device="cpu", num_workers=0, **common)
        from cellio.loading.pipeline import source_outputs
        from cellio.loading.sources import SiteSource

        src = SiteSource(store, ld.config, ld.sampler, ld._meta, train=True, views=ld.views, tta=None,
                         outputs=source_outputs(ld.config, train=True))
        make_iter = lambda: (src(type("B", (), {"iteration": i, "epoch_idx": 0})())  # noqa: E731
                             for i in range(src.num_batches()))
        count = lambda b: len(b[0])  # noqa: E731
    else:
        backend = "dali" if row.startswith("dali") else "torch"
        device = "cuda" if row.endswith("gpu") else "cpu"
        workers = 0 if row == "dali_cpu_inline" else args.workers
        loader = cellio.create_loader(store, args.batch, backend=backend, device=device, num_workers=workers,
                                      **common)
        make_iter = lambda: iter(loader)  # noqa: E731
    median, rates, n = time_epochs(make_iter, count, args.warmup, args.repeats, sync)
    if hasattr(loader, "close"):
        loader.close()
    print(f"  {row:16s} {scenario:10s} {median:9.1f} sites/s  (epoch of {n}; runs {[round(r) for r in rates]})",
          flush=True)
    return {"store": getattr(args, "store_name", "default"), "row": row, "scenario": scenario, "sites_per_s": round(median, 1),
            "sites_per_epoch": n,
            "runs": " ".join(f"{r:.1f}" for r in rates), "crop": args.crop, "batch": args.batch,
            "workers": 0 if row == "dali_cpu_inline" else args.workers,
            "out_MB_per_s": round(median * 6 * args.crop * args.crop * 4 / 1e6, 1)}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({(r["store"], r["scenario"]) for r in results})
    rows = [r for r in ROWS if any(x["row"] == r for x in results)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(scenarios))
    for k, (st, sc) in enumerate(scenarios):
        vals = [next((x["sites_per_s"] for x in results if x["row"] == r and x["scenario"] == sc and x["store"] == st),
                     0) for r in rows]
        ax.bar(np.arange(len(rows)) + k * width, vals, width, label=f"{st} store, {sc}")
    ax.axhline(1000, color="grey", ls="--", lw=1, label="P2 target (DALI CPU)")
    ax.set_xticks(np.arange(len(rows)) + width * (len(scenarios) - 1) / 2, rows, rotation=20)
    ax.set_yscale("log")  # the naive baseline and the store read are orders of magnitude apart
    ax.set_ylabel("sites/s (224 crops, one epoch, log)")
    ax.set_title("cellio loaders, side by side")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=str(ROOT / "benchmarks/data/rxrx1_512.zarr"),
                   help="the default store's path; the others sit beside it (NAME-none.zarr)")
    p.add_argument("--stores", default=",".join(DEFAULT_STORES), help=f"comma list from {tuple(STORES)}")
    p.add_argument("--raw", default=str(ROOT / "benchmarks/data/rxrx1_512"), help="PNG set (naive baseline)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list from {ROWS}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list from {tuple(SCENARIOS)}")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs; the median is reported")
    p.add_argument("--naive-sites", type=int, default=64, help="sites per naive epoch (PNG decode is slow)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for r in rows:
        if r not in ROWS:
            p.error(f"--rows: unknown row {r!r}; expected some of {ROWS}")
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"--scenarios: unknown scenario {s!r}; expected some of {tuple(SCENARIOS)}")
    names = [n for n in args.stores.split(",") if n]
    for n in names:
        if n not in STORES:
            p.error(f"--stores: unknown store {n!r}; expected some of {tuple(STORES)}")
    stores = {}
    for n in names:
        path = store_path(Path(args.store), n)
        ensure_data(Path(args.raw), path, 200, STORES[n])
        stores[n] = cellio.open_store(path)
    env = environment()
    print("stores\n" + "\n".join(f"  {n}: {s}" for n, s in stores.items()) + f"\nenv {json.dumps(env)}", flush=True)
    results = []
    for sc in scenarios:
        for r in rows:
            for n, store in stores.items():  # interleaved: a change in machine load hits both stores alike
                args.store_name = n
                res = run_row(r, sc, args, store)
                if res is not None:
                    results.append(res)
    base = {x["scenario"]: x["sites_per_s"] for x in results if x["row"] == "naive"}
    for x in results:
        x["x_naive"] = round(x["sites_per_s"] / base[x["scenario"]], 1) if x["scenario"] in base else ""
    print(f"\n{'store':8s} {'row':16s} {'scenario':10s} {'sites/s':>9s} {'x naive':>8s}")
    for x in results:
        print(f"{x['store']:8s} {x['row']:16s} {x['scenario']:10s} {x['sites_per_s']:9.1f} {str(x['x_naive']):>8s}")
    for n in stores:
        p2 = next((x["sites_per_s"] for x in results if x["row"] == "dali_cpu" and x["scenario"] == "d4_shift"
                   and x["store"] == n), None)
        if p2 is not None:
            print(f"P2 on the {n} store ({stores[n].attrs['codec']}, {stores[n].image_layout}; DALI CPU mode, D4 + "
                  f"shift, {args.crop} crops, >= 1000 sites/s): {p2:.0f} sites/s -> "
                  f"{'met' if p2 >= 1000 else 'NOT met'} (load average at start {env['load_avg_at_start']})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pipeline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    (out / "pipeline_env.json").write_text(json.dumps({**env, "args": vars(args)}, indent=2))
    plot(results, out / "pipeline.png")
    print(f"wrote {out / 'pipeline.csv'}, {out / 'pipeline.png'}, {out / 'pipeline_env.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
