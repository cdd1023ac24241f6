"""The prepared GPU check: one run on an H200 (or, with --device cpu --tiny, in seconds on any CPU).

Sections (run in this order; each is guarded, so one failing section still lets the others report):
  parity      DALI on --device vs the pure-torch reference (cellio.loading.transforms.apply_torch, on the same device) on
              the SAME drawn parameters, per op group: D4 + shift, flips, arbitrary rotation, random resized crop,
              intensity jitter + normalize. Exact groups: every value within float32 rounding (1e-5 abs + 1e-5
              rel); interpolated groups: <= 1 grey level (1/std' in normalized units) on < 5 % of pixels
              (docs/pipelines.md).
  coverage    one loader per simulated rank (3 ranks), two epochs each: every site index exactly once per epoch.
  throughput  sites/s of augmented batches (one warm-up epoch, then the median of --epochs epochs; timing by
              benchmarks/pipeline.py's run_row): D4 + shift and arbitrary rotation at 224, D4 at the full site,
              for DALI on the GPU, DALI CPU mode and the torch path on the GPU (CPU mode: DALI CPU and torch CPU),
              plus the read step alone; GPU memory per row.
  train       DenseNet-121 (1139 classes, bf16, channels_last) step time with the real DALI loader vs with
              batches already on the GPU (benchmarks/train_step.py's bench_row); ratio target <= 1.05.

    python benchmarks/gpu_check.py --out $OUT                         # on the H200 (see docs/performance.md)
    python benchmarks/gpu_check.py --device cpu --tiny                # the same code path, tiny, on a CPU

Writes gpu_check_<hardware>.json and .csv under --out (default $OUT, else benchmarks/results/) after every
section, prints a short table last, and exits 1 if parity or coverage fails or any section raised.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # cellio/trainer from the checkout, and the sibling benchmark modules
    if _p not in sys.path:
        sys.path.insert(0, _p)

import cellio  # noqa: E402
from cellio.loading.transforms import AugmentConfig  # noqa: E402

SECTIONS: tuple[str, ...] = ("parity", "coverage", "throughput", "train")
EXACT_ATOL = EXACT_RTOL = 1e-5      # float32 rounding, as tests/test_pipeline.py
GREY_TOL = 1.0 + 1e-3               # interpolated ops: at most one grey level ...
MAX_OFF_BY_ONE = 0.05               # ... on fewer than 5 % of the values (docs/pipelines.md)
P3_TARGET = 10_000.0                # sites/s, DALI GPU, 224 crops, D4 + shift
LOADER_RATIO_TARGET = 1.05          # loader step time / resident step time
NUM_CLASSES = 1139                  # RxRx1: 1108 treatments + 31 controls as extra classes

# op group -> (AugmentConfig fields besides crop_size, interpolated?)
PARITY_GROUPS: dict[str, tuple[dict[str, Any], bool]] = {
    "d4_shift": (dict(rotation="d4", shift=True), False),
    "flips": (dict(rotation="none", shift=True, hflip=0.5, vflip=0.5), False),
    "rotate_any": (dict(rotation="any", max_angle=180.0, shift=True, hflip=0.5), True),
    "random_resized_crop": (dict(rotation="d4", shift=True, rrc_scale=(0.25, 1.0)), True),
    "jitter_normalize": (dict(rotation="none", shift=True, intensity_scale=(0.8, 1.2),
                              intensity_shift=(-8.0, 8.0), normalize="plate"), False),
}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full H200 plan or the tiny CPU plan (see make_plan)."""

    size: tuple[int, int]          # synthetic site (height, width)
    classes: int
    train_experiments: int
    test_experiments: int
    crop: int                      # the "224" rows
    full_crop: int                 # the "full site" rows
    batch: int
    parity_sites: int
    workers: int
    epochs: int
    train_rows: tuple[tuple[str, int, int], ...]   # (model, crop, batch)
    train_steps: int
    train_warmup: int
    train_repeats: int


def make_plan(tiny: bool, device: str, epochs: int | None, workers: int | None, batch: int | None) -> Plan:
    cpus = os.cpu_count() or 1
    if tiny:
        # odd, non-square sites so height/width mix-ups fail; 8 classes -> 320 sites
        plan = Plan(size=(67, 61), classes=8, train_experiments=1, test_experiments=1, crop=32, full_crop=61,
                    batch=8, parity_sites=24, workers=1, epochs=1,
                    train_rows=(("densenet_tiny", 32, 8),), train_steps=2, train_warmup=1, train_repeats=2)
    else:
        # 1,056 sites of 512x512 (704 train): epochs long enough that epoch boundaries do not dominate at >10k
        # sites/s, and 11 train batches of 64 per epoch; synthesis + ingest take ~30 s on 16 cores
        rows = (("densenet121", 224, 64), ("densenet121", 512, 16)) if device == "cuda" \
            else (("densenet121", 224, 16),)
        plan = Plan(size=(512, 512), classes=32, train_experiments=2, test_experiments=1, crop=224, full_crop=512,
                    batch=64, parity_sites=128, workers=max(1, min(12, cpus - 2)), epochs=3,
                    train_rows=rows, train_steps=10, train_warmup=3, train_repeats=3)
    changes = {k: v for k, v in (("epochs", epochs), ("workers", workers), ("batch", batch)) if v is not None}
    if changes:
        from dataclasses import replace

        plan = replace(plan, **changes)
    return plan


@dataclass
class Report:
    """Everything the run found; written as JSON (whole) and CSV (one row per figure) after every section."""

    hardware: str
    device: str
    tiny: bool
    plan: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    parity: list[dict[str, Any]] = field(default_factory=list)
    coverage: list[dict[str, Any]] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    section_seconds: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    verdicts: dict[str, Any] = field(default_factory=dict)
    deadline: float = field(default=float("inf"), repr=False)  # perf_counter time after which timed rows stop

    def over_budget(self, what: str) -> bool:
        """True (and noted) when the time budget is spent: later timed rows are skipped, never estimated."""
        if time.perf_counter() < self.deadline:
            return False
        self.skipped.append(f"{what}: time budget spent")
        print(f"  {what}: skipped, time budget spent", flush=True)
        return True

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for section in ("parity", "coverage", "throughput", "train"):
            for item in getattr(self, section):
                name = item.get("name", "")
                for k, v in item.items():
                    if k != "name" and (v is None or isinstance(v, (int, float, str, bool))):
                        rows.append({"section": section, "name": name, "metric": k, "value": v})
        for k, v in self.verdicts.items():
            rows.append({"section": "verdict", "name": k, "metric": "value", "value": v})
        for e in self.errors:
            rows.append({"section": "error", "name": e["section"], "metric": "error", "value": e["error"]})
        return rows


# ---------------------------------------------------------------------------------------------------------------
# helpers
def hardware_tag(device: str) -> str:
    """'H200' for 'NVIDIA H200', 'cpu' in CPU mode: the suffix of the result files."""
    if device != "cuda":
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(0)
    name = re.sub(r"^NVIDIA\s+", "", name)
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "cuda"


def nvidia_smi() -> dict[str, Any]:
    """nvidia-smi's memory/utilisation query and its full text, when the tool exists."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False}
    out: dict[str, Any] = {"available": True}
    for key, cmd in (("query", [exe, "--query-gpu=name,memory.used,memory.total,utilization.gpu,temperature.gpu,"
                                     "power.draw", "--format=csv,noheader"]), ("text", [exe])):
        try:
            out[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            out[key] = f"failed: {exc}"
    return out


def gpu_memory(device: str) -> dict[str, Any]:
    """Peak torch allocation since the last reset, and the device's used memory (DALI's pool and contexts too)."""
    if device != "cuda":
        return {}
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"torch_max_allocated_MB": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "device_used_MB": round((total - free) / 2**20, 1)}


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def ensure_store(work: Path, plan: Plan) -> Any:
    """Synthesize the RxRx1-layout set and ingest it uncompressed under `work` (reused when already there)."""
    h, w = plan.size
    tag = f"{h}x{w}_c{plan.classes}_e{plan.train_experiments}{plan.test_experiments}"
    raw, store_path = work / f"raw_{tag}", work / f"store_{tag}.zarr"
    if store_path.exists():
        try:
            return cellio.open_store(store_path)
        except cellio.CellioError as exc:
            print(f"  store {store_path} unusable ({exc}); rebuilding", flush=True)
            shutil.rmtree(store_path)
    if raw.exists():
        shutil.rmtree(raw)
    t0 = time.perf_counter()
    cellio.synthesize(raw, classes=plan.classes, train_experiments_per_cell_type=plan.train_experiments,
                      test_experiments_per_cell_type=plan.test_experiments, size=(h, w), positive_controls=2,
                      seed=0, progress=False, check=False)
    t1 = time.perf_counter()
    cellio.ingest(raw, store_path, codec="none", progress=False)
    print(f"  synthesized in {t1 - t0:.1f} s, ingested in {time.perf_counter() - t1:.1f} s", flush=True)
    return cellio.open_store(store_path)


# ---------------------------------------------------------------------------------------------------------------
# parity
def _compare(img: Any, ref: Any, std_p: np.ndarray, interpolated: bool) -> tuple[float, float, int, int, int]:
    """(max |diff|, max diff in grey levels, values, values over tolerance, values off by > 0.5 grey)."""
    import torch

    diff = (img - ref).abs()
    # one grey level is 1/std' in normalized units (std' folds the intensity scale in, as DALI does)
    grey = diff * torch.from_numpy(std_p)[:, :, None, None]
    over = grey > GREY_TOL if interpolated else diff > EXACT_ATOL + EXACT_RTOL * ref.abs()
    return float(diff.max()), float(grey.max()), diff.numel(), int(over.sum()), int((grey > 0.5).sum())


def parity_group(store: Any, name: str, cfg: AugmentConfig, interpolated: bool, device: str, batch: int,
                 n_sites: int, seed: int = 7) -> dict[str, Any]:
    """DALI (the real loader, on `device`) vs apply_torch on the CPU (the reference the CPU tests trust), fed the
    same SourceBatch; on CUDA also the torch path on the GPU vs that CPU reference.

    Both sides come from one SiteSource (the loader's own sampler, site table and config), the same way the torch
    backend gets its batches, so the drawn parameters are identical by construction; the sample order is checked.
    """
    from cellio.loading.pipeline import source_outputs
    from cellio.loading.sources import SiteSource
    from cellio.loading.transforms import apply_torch, normalization_affine

    dev = "cuda" if device == "cuda" else "cpu"
    loader = cellio.create_loader(store, batch, train=True, augment=cfg, backend="dali", device=dev,
                                  num_workers=0, rank=0, world_size=1, seed=seed,
                                  indices=np.arange(min(n_sites, len(store))), datasets=None, last_batch="partial")
    src = SiteSource(store, loader.config, loader.sampler, loader._meta, train=True, views=loader.views, tta=None,
                     outputs=source_outputs(loader.config, train=True))
    acc = {"dali": [0.0, 0.0, 0, 0, 0], "torch_dev": [0.0, 0.0, 0, 0, 0]}

    def add(key: str, found: tuple[float, float, int, int, int]) -> None:
        a = acc[key]
        a[0], a[1] = max(a[0], found[0]), max(a[1], found[1])
        for k in (2, 3, 4):
            a[k] += found[k]

    try:
        for b, got in enumerate(loader):
            sb = src.batch(loader.epoch, b)
            if sb is None or not np.array_equal(sb.meta[:, 2], got["index"].numpy()):
                raise AssertionError(f"parity {name}: batch {b}: the DALI loader and the reference source disagree "
                                     "on which sites the batch holds")
            if str(got["image"].device).split(":")[0] != dev:
                raise AssertionError(f"parity {name}: DALI on {dev} yielded a batch on {got['image'].device}")
            ref = apply_torch(sb.windows, sb.params, sb.mean, sb.std, loader.config, device="cpu").float()
            img = got["image"].float().cpu()
            if img.shape != ref.shape:
                raise AssertionError(f"parity {name}: batch {b}: DALI gave {tuple(img.shape)}, the reference "
                                     f"{tuple(ref.shape)}")
            _, std_p = normalization_affine(sb.mean, sb.std, sb.params["scale"], sb.params["shift"])
            add("dali", _compare(img, ref, std_p, interpolated))
            if dev != "cpu":  # the torch path on the device (what backend="torch", device="cuda" runs)
                ref_dev = apply_torch(sb.windows, sb.params, sb.mean, sb.std, loader.config, device=dev)
                add("torch_dev", _compare(ref_dev.float().cpu(), ref, std_p, interpolated))
    finally:
        loader.close()
    max_abs, max_grey, n_values, n_over, n_off = acc["dali"]
    if n_values == 0:
        raise AssertionError(f"parity {name}: the loader yielded no batch")
    frac_off = n_off / n_values
    ok = n_over == 0 and (not interpolated or frac_off < MAX_OFF_BY_ONE)
    row = {"name": name, "device": dev, "interpolated": interpolated, "crop": cfg.crop_size,
           "sites": int(min(n_sites, len(store))), "values": n_values, "max_abs_diff": max_abs,
           "max_grey_diff": round(max_grey, 4), "values_over_tolerance": n_over,
           "frac_off_by_one_grey": round(frac_off, 6),
           "tolerance": "<= 1 grey level on < 5% of values" if interpolated else
           f"abs <= {EXACT_ATOL} + {EXACT_RTOL}*|ref|"}
    t = acc["torch_dev"]
    if t[2]:
        t_frac = t[4] / t[2]
        t_ok = t[3] == 0 and (not interpolated or t_frac < MAX_OFF_BY_ONE)
        row.update(torch_device_max_abs_diff=t[0], torch_device_max_grey_diff=round(t[1], 4),
                   torch_device_values_over_tolerance=t[3], torch_device_frac_off_by_one_grey=round(t_frac, 6),
                   torch_device_ok=bool(t_ok))
        ok = ok and t_ok
    row["ok"] = bool(ok)
    return row


def run_parity(store: Any, plan: Plan, device: str, report: Report) -> None:
    for name, (fields, interpolated) in PARITY_GROUPS.items():
        cfg = AugmentConfig(crop_size=plan.crop, **fields)
        row = parity_group(store, name, cfg, interpolated, device, plan.batch, plan.parity_sites)
        report.parity.append(row)
        torch_dev = f"; torch on {device} vs CPU: {row['torch_device_values_over_tolerance']} over" \
            if "torch_device_ok" in row else ""
        print(f"  {name:20s} DALI vs reference: max |diff| {row['max_abs_diff']:.3g} ({row['max_grey_diff']:.3g} "
              f"grey), {row['values_over_tolerance']}/{row['values']} over tolerance, "
              f"{row['frac_off_by_one_grey']:.2%} off by one{torch_dev} -> {'OK' if row['ok'] else 'FAIL'}",
              flush=True)


# ---------------------------------------------------------------------------------------------------------------
# coverage
def run_coverage(store: Any, plan: Plan, device: str, report: Report, world_size: int = 3, epochs: int = 2,
                 seed: int = 11) -> None:
    """Every site index exactly once per epoch over `world_size` simulated ranks (the DALI loader, with workers,
    reused across epochs as in training)."""
    dev = "cuda" if device == "cuda" else "cpu"
    n = len(store)
    loaders = [cellio.create_loader(store, plan.batch, train=True, augment="d4_shift", crop_size=plan.crop,
                                    rank=r, world_size=world_size, seed=seed, datasets=None, last_batch="partial",
                                    backend="dali", device=dev, num_workers=min(2, plan.workers))
               for r in range(world_size)]
    try:
        seen: list[list[np.ndarray]] = [[] for _ in range(epochs)]
        per_rank: list[list[int]] = [[] for _ in range(epochs)]
        for ld in loaders:
            for e in range(epochs):  # a finished epoch moves the loader on to the next one
                got = [b["index"].numpy() for b in ld]
                seen[e] += got
                per_rank[e].append(int(sum(len(g) for g in got)))
    finally:
        for ld in loaders:
            ld.close()
    orders = []
    for e in range(epochs):
        idx = np.concatenate(seen[e]) if seen[e] else np.zeros(0, np.int64)
        counts = np.bincount(idx, minlength=n) if len(idx) else np.zeros(n, np.int64)
        missing, dup = int((counts == 0).sum()), int((counts > 1).sum())
        ok = len(idx) == n and missing == 0 and dup == 0 and idx.min() >= 0 and idx.max() < n
        orders.append(idx)
        report.coverage.append({"name": f"epoch{e}", "ranks": world_size, "sites": n, "seen": int(len(idx)),
                                "unique": int((counts > 0).sum()), "missing": missing, "duplicated": dup,
                                "per_rank": " ".join(map(str, per_rank[e])), "ok": bool(ok)})
        print(f"  epoch {e}: {len(idx)} seen over {world_size} ranks ({per_rank[e]}), {missing} missing, "
              f"{dup} duplicated -> {'OK' if ok else 'FAIL'}", flush=True)
    if epochs > 1 and len(orders[0]) == len(orders[1]):
        report.coverage[-1]["order_differs_from_epoch0"] = bool(not np.array_equal(orders[0], orders[1]))


# ---------------------------------------------------------------------------------------------------------------
# throughput
def throughput_plan(plan: Plan, device: str) -> list[tuple[str, str, int]]:
    """(row of benchmarks/pipeline.py, preset, crop) in run order."""
    rows = ("dali_gpu", "dali_cpu", "torch_gpu", "store_read") if device == "cuda" \
        else ("dali_cpu", "torch", "store_read")
    out = []
    for preset, crop in (("d4_shift", plan.crop), ("rotate_any", plan.crop), ("d4_shift", plan.full_crop)):
        out += [(row, preset, crop) for row in rows]
    return out


def run_throughput(store: Any, plan: Plan, device: str, report: Report, prefetch: int = 2) -> None:
    import pipeline as bench_pipeline  # benchmarks/pipeline.py: rows, loaders and epoch timing

    for row, preset, crop in throughput_plan(plan, device):
        if report.over_budget(f"throughput {row}/{preset}/{crop}"):
            continue
        ns = argparse.Namespace(crop=crop, batch=plan.batch, workers=plan.workers, prefetch=prefetch, warmup=1,
                                repeats=plan.epochs)
        reset_peak(device)
        res = bench_pipeline.run_row(row, preset, ns, store)
        if res is None:
            continue
        res = {"name": f"{row}/{preset}/{crop}", **res, **gpu_memory(device)}
        report.throughput.append(res)
        gc.collect()


# ---------------------------------------------------------------------------------------------------------------
# train
def run_train(store: Any, plan: Plan, device: str, report: Report) -> None:
    import torch
    import train_step as bench_train  # benchmarks/train_step.py: the step, resident batches, interleaved timing

    from trainer.training.labels import ClassMap

    # the real head: every RxRx1 class id (the synthetic sirnas are real ids, so labels encode normally)
    class_map = ClassMap(tuple(range(NUM_CLASSES)))
    ns = argparse.Namespace(augment="d4_shift", backend="dali", num_workers=plan.workers, steps=plan.train_steps,
                            warmup=plan.train_warmup, repeats=plan.train_repeats)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    for model, crop, batch in plan.train_rows:
        if report.over_budget(f"train {model}/{crop}/b{batch}"):
            continue
        reset_peak(device)
        t0 = time.perf_counter()
        r = bench_train.bench_row(store, class_map, model, crop, batch, dev, ns)
        row = {"name": f"{model}/{crop}/b{batch}", **asdict(r), "classes": NUM_CLASSES,
               "seconds": round(time.perf_counter() - t0, 1), **gpu_memory(device)}
        row["ok"] = bool(r.ratio <= LOADER_RATIO_TARGET) if device == "cuda" else None  # a GPU target
        report.train.append(row)
        print(f"  {model} {crop}px b{batch} {r.amp}: resident {r.resident_ms:.1f} ms, loader {r.loader_ms:.1f} ms, "
              f"ratio {r.ratio:.3f}", flush=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# verdicts, files, the table
def verdicts(report: Report, plan: Plan) -> dict[str, Any]:
    v: dict[str, Any] = {}
    if report.parity:
        v["parity_ok"] = all(r["ok"] for r in report.parity) and len(report.parity) == len(PARITY_GROUPS)
    if report.coverage:
        v["coverage_ok"] = all(r["ok"] for r in report.coverage)
    gpu_row = "dali_gpu" if report.device == "cuda" else None
    p3 = next((r["sites_per_s"] for r in report.throughput
               if gpu_row and r["row"] == gpu_row and r["scenario"] == "d4_shift" and r["crop"] == plan.crop), None)
    v["p3_dali_gpu_d4_224_sites_per_s"] = p3
    v["p3_met"] = None if p3 is None else bool(p3 >= P3_TARGET)
    if report.train:
        first = report.train[0]
        v["loader_ratio"] = round(first["ratio"], 3)
        # the target is for a GPU: a CPU-bound model step says nothing about the loader
        v["loader_ratio_met"] = bool(first["ratio"] <= LOADER_RATIO_TARGET) if report.device == "cuda" else None
    return v


def write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu_check_{report.hardware}"
    js, cs = stem.with_suffix(".json"), stem.with_suffix(".csv")
    data = asdict(report)
    data.pop("deadline")  # a perf_counter reading: meaningless outside this process (the budget is in argv)
    js.write_text(json.dumps(data, indent=1, default=str))
    with open(cs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["section", "name", "metric", "value"])
        w.writeheader()
        w.writerows(report.csv_rows())
    return js, cs


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def summary(report: Report, plan: Plan, wall_s: float) -> str:
    """The short table printed last."""
    lines = [f"GPU check ({report.hardware}): device {report.device}, {report.store.get('sites', '?')} sites "
             f"{plan.size[0]}x{plan.size[1]}, batch {plan.batch}, workers {plan.workers}, {wall_s:.0f} s",
             f"{'section':11s} {'item':34s} {'figure':40s} verdict"]

    def add(section: str, item: str, figure: str, verdict: str) -> None:
        lines.append(f"{section:11s} {item:34s} {figure:40s} {verdict}")

    for r in report.parity:
        add("parity", r["name"], f"max {r['max_abs_diff']:.2g} ({r['max_grey_diff']:.2g} grey), "
            f"{r['values_over_tolerance']} over, {r['frac_off_by_one_grey']:.1%} off1", "OK" if r["ok"] else "FAIL")
    for r in report.coverage:
        add("coverage", f"{r['name']}, {r['ranks']} ranks", f"{r['seen']} seen, {r['missing']} missing, "
            f"{r['duplicated']} dup", "OK" if r["ok"] else "FAIL")
    for r in report.throughput:
        mem = f", {r['device_used_MB']:.0f} MB dev" if "device_used_MB" in r else ""
        add("throughput", f"{r['row']} {r['scenario']} {r['crop']}", f"{_fmt_rate(r['sites_per_s'])} sites/s{mem}",
            "")
    for r in report.train:
        add("train", f"{r['model']} {r['crop']} b{r['batch']} {r['amp']}",
            f"{r['resident_ms']:.1f} / {r['loader_ms']:.1f} ms, ratio {r['ratio']:.3f}",
            ("met" if r["ok"] else "NOT met") if report.device == "cuda" else "(GPU target)")
    v = report.verdicts
    if v.get("p3_dali_gpu_d4_224_sites_per_s") is not None:
        add("P3", f"DALI GPU D4+shift {plan.crop}", f"{_fmt_rate(v['p3_dali_gpu_d4_224_sites_per_s'])} sites/s "
            f"(>= {_fmt_rate(P3_TARGET)})", "met" if v["p3_met"] else "NOT met")
    else:
        add("P3", f"DALI GPU D4+shift {plan.crop}", "not measured (no GPU row)", "-")
    if "loader_ratio" in v:
        add("loader", "ratio loader/resident (first row)", f"{v['loader_ratio']:.3f} (<= {LOADER_RATIO_TARGET})",
            ("met" if v["loader_ratio_met"] else "NOT met") if report.device == "cuda" else "(GPU target)")
    for what in report.skipped:
        lines.append(f"SKIPPED {what}")
    for e in report.errors:
        lines.append(f"ERROR in {e['section']}: {e['error']}")
    failed = [k for k in ("parity_ok", "coverage_ok") if v.get(k) is False]
    lines.append("result: " + ("FAIL (" + ", ".join(failed + [f"{len(report.errors)} section error(s)"] *
                                                      bool(report.errors)) + ")"
                               if failed or report.errors else "OK"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--tiny", action="store_true", help="67x61 sites, 32 px crops, tiny model: seconds on a CPU")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {SECTIONS}")
    p.add_argument("--work", help="where the synthetic set and store go (kept; default: a temp dir, removed)")
    p.add_argument("--out", help="results folder (default: $OUT if set, else benchmarks/results)")
    p.add_argument("--epochs", type=int, help="timed epochs per throughput row (median; one warm-up epoch first)")
    p.add_argument("--workers", type=int, help="loader worker processes (default: min(12, cores - 2); tiny: 1)")
    p.add_argument("--batch", type=int, help="batch size of the parity/coverage/throughput loaders")
    p.add_argument("--budget", type=float, default=360.0,
                   help="seconds after which remaining throughput/train rows are skipped (parity and coverage "
                        "always run); default 360 keeps a device call well under its 10 minutes")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        p.error(f"--sections: expected a comma list from {SECTIONS}, found {args.sections!r}")
    args.sections = sections
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs: expected >= 1, found {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    plan = make_plan(args.tiny, device, args.epochs, args.workers, args.batch)
    out = Path(args.out or os.environ.get("OUT") or (HERE / "results"))
    report = Report(hardware="cpu", device=device, tiny=args.tiny, plan=asdict(plan),
                    deadline=t_start + args.budget)
    print(f"gpu_check: device {device}, sections {args.sections}, out {out}", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cellio_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    store = None
    try:
        # the data first: synthesis and ingest fork worker processes, better before CUDA starts its threads
        t0 = time.perf_counter()
        print("data ...", flush=True)
        try:
            store = ensure_store(work, plan)
            report.store = {"path": str(getattr(store, "path", work)), "sites": len(store),
                            "image_shape": list(store.image_shape), "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - without data no section can run; still write the report
            traceback.print_exc()
            report.errors.append({"section": "data", "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc()})
        report.hardware = hardware_tag(device)
        import _common

        report.environment = _common.environment(
            argv=sys.argv if argv is None else argv, sections=args.sections, torch_cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(0) if device == "cuda" else None)
        try:
            import nvidia.dali as dali

            report.environment["dali"] = dali.__version__
        except ImportError as exc:
            report.environment["dali"] = f"not importable: {exc}"
        print(f"hardware {report.hardware}; data {report.store}", flush=True)
        sections: dict[str, Callable[[Any, Plan, str, Report], None]] = {
            "parity": run_parity, "coverage": run_coverage, "throughput": run_throughput, "train": run_train}
        for name in SECTIONS:
            if name not in args.sections or store is None:
                continue
            print(f"{name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                sections[name](store, plan, device, report)
            except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others' figures
                traceback.print_exc()
                report.errors.append({"section": name, "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()})
            report.section_seconds[name] = round(time.perf_counter() - t0, 1)
            report.verdicts = verdicts(report, plan)
            write(report, out)  # partial results survive a run cut short
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if device == "cuda":
        report.gpu = {"nvidia_smi": nvidia_smi(), **gpu_memory(device)}
    report.verdicts = verdicts(report, plan)
    wall = time.perf_counter() - t_start
    report.section_seconds["total"] = round(wall, 1)
    js, cs = write(report, out)
    print(f"\nwrote {js} and {cs}\n")
    print(summary(report, plan, wall), flush=True)
    failed = report.verdicts.get("parity_ok") is False or report.verdicts.get("coverage_ok") is False
    return 1 if failed or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
