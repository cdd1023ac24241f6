"""The loader against what users pick instead: the seed's .npy + DataLoader, WebDataset, litdata, SPDL and cellio.

    python benchmarks/peers.py                               # all sections (~15 min on 2 cores, 256 sites)
    python benchmarks/peers.py --sites 64 --repeats 2 --sections local     # a quick look
    python benchmarks/peers.py --check-only                  # only the pixel check of every row

Every row gets the same sites (RxRx1-layout 512x512x6 PNG sites made by `cellio.synthesize`, converted into each
row's own format: benchmarks/_peer_formats.py), the same augmentation (random crop of --crop, a D4 view, per-channel
normalisation to float32), batches of --batch, every site once per epoch, and the same number W of worker processes
or threads (benchmarks/_peer_rows.py says what W means for each). Before anything is timed, every row's batches are
checked site by site against the PNGs with the augmentation off (a broken peer is not a fast peer); a row that
fails the check, or whose package is missing, is reported with the reason and not timed.

Sections (--sections):
  local   sites/s, CPU seconds per 1,000 sites of the row's whole process tree (parent, workers, threads), peak
          memory of the tree (RSS summed, and PSS), time to the first batch, disk bytes and conversion time of the
          row's format; at each W of --workers; epochs timed interleaved (A B C .., A B C ..) after a warm-up epoch,
          medians of --repeats.
  train   the same rows feeding a training step of the CPU plan's model (trainer/plan.py: densenet_tiny on
          --train-crop px crops, batch --batch, one torch thread per core, channels_last): img/s and
          loader/resident, where resident is the same step on a batch already in memory (its own process, no
          loader).
  s3      the rows that stream from object storage, from a local S3-compatible server (moto, 127.0.0.1): WebDataset
          shards over http (its curl pipe), litdata from s3://, cellio from an s3:// store.

Writes benchmarks/results/peers.csv/.png, peers_train.csv/.png, peers_s3.csv/.png and peers_env.json; prints the
ratios side by side (cellio's best backend vs the best peer at the same W). Each row runs in its own process
(benchmarks/_peer_server.py), measured from outside with psutil (benchmarks/_tree.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import DATA, RESULTS, environment, write_csv  # noqa: E402
from _peer_formats import FORMATS, Formats, prepare  # noqa: E402
from _peer_rows import (CELLIO, PEERS, ROWS, STREAMING, RowSpec, compare_fingerprints,  # noqa: E402
                        missing_package, reference_fingerprints)
from _peer_server import RowError, RowServer, TrainSpec  # noqa: E402
from _tree import TreeMemory, tree_cpu_seconds, wait_quiet  # noqa: E402

log = logging.getLogger("peers")
SECTIONS = ("local", "train", "s3")
# the format each row reads (disk bytes and conversion time come from it)
ROW_FORMAT = {"seed": "npy", "wds": "wds", "wds_lz4": "wds_lz4", "litdata": "litdata", "spdl": "npy",
              "cellio_torch": "store", "cellio_dali": "store"}
# the CPU plan's model (trainer/plan.py make_plan without CUDA: densenet_tiny, model.kwargs left at the config's
# default {}, 224 px crops = 0.44 of a 512 px site, batch 32, lr 2e-3, one torch thread per core, channels_last)
# the RxRx1-layout sites cellio.synthesize makes: six channels, RxRx1's four cell types
TRAIN_MODEL, TRAIN_KWARGS = "densenet_tiny", {"in_chans": 6, "num_cell_types": 4}
BUCKET = "cellio-peers"


@dataclass
class RowResult:
    """One (section, row, W): every figure the tables show, or why there is none."""

    section: str
    row: str
    workers: int
    error: str = ""
    epoch_s: list[float] = field(default_factory=list)
    epoch_cpu_s: list[float] = field(default_factory=list)
    epoch_start_s: list[float] = field(default_factory=list)   # iter() to the first batch of each timed epoch
    span_cpu_s: float = float("nan")
    sites: int = 0
    first_batch_s: float = float("nan")
    peak_rss: int = 0
    peak_pss: int = 0
    server_cpu_s: list[float] = field(default_factory=list)
    loader_step_s: list[float] = field(default_factory=list)
    resident_step_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def sites_per_s(self) -> float:
        return self.sites / statistics.median(self.epoch_s) if self.epoch_s else float("nan")

    @property
    def cpu_per_1000(self) -> float:
        """CPU seconds of the row's tree per 1,000 sites over the whole timed span (between-epoch work included)."""
        n = self.sites * len(self.epoch_s)
        return self.span_cpu_s / n * 1000 if n else float("nan")


# --- rows and processes ---------------------------------------------------------------------------------------
def base_spec(fmt: Formats, args: argparse.Namespace, mean: np.ndarray, std: np.ndarray) -> RowSpec:
    return RowSpec(row="seed", workers=0, n_sites=fmt.sites, crop=args.crop, batch=args.batch,
                   mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), store=str(fmt.store),
                   npy=str(fmt.npy), wds=sorted(str(p) for p in fmt.wds.glob("*.tar")),
                   wds_lz4=sorted(str(p) for p in fmt.wds_lz4.glob("*.tar")), litdata=str(fmt.litdata),
                   seed=args.seed, torch_threads=args.torch_threads)


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def start_servers(specs: list[RowSpec | None], results: dict[str, RowResult]) -> dict[str, RowServer]:
    servers: dict[str, RowServer] = {}
    for spec in specs:
        name = spec.row if spec is not None else "resident"
        try:
            servers[name] = RowServer(spec, str(ROOT))
        except RowError as exc:
            if name in results:
                results[name].error = f"could not start: {exc}"
            log.warning("%s", exc)
    return servers


def close_servers(servers: dict[str, RowServer]) -> None:
    for s in servers.values():
        s.close()


def check_rows(base: RowSpec, rows: list[str], reference: np.ndarray, workers: int) -> dict[str, str]:
    """Each row's deterministic epoch against the PNGs, at `workers` W, in one checker process (memory and CPU are
    not measured here); row -> "" (passed) or what is wrong."""
    verdict: dict[str, str] = {}
    checker: RowServer | None = None
    try:
        for row in rows:
            missing = missing_package(row)
            if missing:
                verdict[row] = f"not installed: {missing}"
            else:
                try:
                    checker = checker if checker is not None and checker.proc.is_alive() else RowServer(None,
                                                                                                      str(ROOT))
                    reply = checker.call("check", spec=replace(base, row=row, workers=workers),
                                         truth=(base.mean, base.std))
                    got = {int(i): f for i, f in zip(reply["ids"], reply["fingerprints"])}
                    verdict[row] = compare_fingerprints(row, got, reply["residual"], reference) or ""
                except RowError as exc:
                    verdict[row] = f"failed to run: {exc}"
            print(f"  check {row:<13} W={workers}: {verdict[row] or 'same pixels as the PNGs, every site once'}",
                  flush=True)
    finally:
        if checker is not None:
            checker.close()
    return verdict


def time_epochs(section: str, base: RowSpec, rows: list[str], workers: int, args: argparse.Namespace,
                mem: TreeMemory, server_pid: int | None = None) -> list[RowResult]:
    """Warm-up epoch per row (fresh loader: time to first batch), then --repeats epochs interleaved."""
    results = {r: RowResult(section, r, workers) for r in rows}
    servers = start_servers([replace(base, row=r, workers=workers) for r in rows], results)
    try:
        for name, srv in list(servers.items()):
            mem.watch(srv.pid)
            try:
                reply = srv.call("warmup")
                results[name].first_batch_s = reply["first_batch_s"]
                results[name].sites = reply["sites"]
            except RowError as exc:
                results[name].error = f"warm-up failed: {exc}"
                srv.close()
                del servers[name]
            mem.watch(None)
            wait_quiet(srv.pid)
        span0 = {n: tree_cpu_seconds(s.pid) for n, s in servers.items()}
        for rep in range(args.repeats):
            for name, srv in servers.items():
                res = results[name]
                if not res.ok:
                    continue
                mem.watch(srv.pid)
                c0 = tree_cpu_seconds(srv.pid)
                s0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
                try:
                    reply = srv.call("epoch", epoch=rep + 1)
                except RowError as exc:
                    res.error = f"epoch {rep + 1} failed: {exc}"
                    continue
                finally:
                    mem.watch(None)
                res.epoch_cpu_s.append(tree_cpu_seconds(srv.pid) - c0)
                if server_pid:
                    res.server_cpu_s.append(tree_cpu_seconds(server_pid) - s0)
                res.epoch_s.append(reply["seconds"])
                res.epoch_start_s.append(reply["start_s"])
                wait_quiet(srv.pid)  # its background work (prefetch, worker exit) stays out of the next row's time
            print(f"  {section} W={workers} repeat {rep + 1}/{args.repeats}: " + "  ".join(
                f"{n} {results[n].sites / results[n].epoch_s[-1]:.0f}" for n in servers
                if results[n].ok and results[n].epoch_s), flush=True)
        for name, srv in servers.items():
            res = results[name]
            res.span_cpu_s = tree_cpu_seconds(srv.pid) - span0[name]
            peak = mem.peak(srv.pid)
            res.peak_rss, res.peak_pss = peak["rss"], peak["pss"]
    finally:
        close_servers(servers)
    return [results[r] for r in rows]


def time_training(base: RowSpec, rows: list[str], workers: int, train: TrainSpec,
                  args: argparse.Namespace) -> list[RowResult]:
    """Loader steps per row and resident steps, interleaved repeat by repeat (resident, A, B, ...)."""
    results = {r: RowResult("train", r, workers) for r in ["resident", *rows]}
    # the training processes set torch's threads to the plan's (train.threads); DataLoader workers still take 1
    specs: list[RowSpec | None] = [None, *(replace(base, row=r, workers=workers, crop=train.crop, torch_threads=0)
                                           for r in rows)]
    servers = start_servers(specs, results)
    try:
        for name, srv in list(servers.items()):
            try:
                srv.call("train_setup", train=train, warmup_steps=args.train_warmup)
            except RowError as exc:
                results[name].error = f"training set-up failed: {exc}"
                srv.close()
                del servers[name]
            wait_quiet(srv.pid)
        span0 = {n: tree_cpu_seconds(s.pid) for n, s in servers.items()}
        for rep in range(args.repeats):
            for name, srv in servers.items():
                res = results[name]
                if not res.ok:
                    continue
                try:
                    # skip what a loader can hold ready: DataLoader's 2 batches per worker, DALI's and SPDL's 2
                    reply = srv.call("train_block", steps=args.train_steps, skip=2 * max(1, workers))
                except RowError as exc:
                    res.error = f"training failed: {exc}"
                    continue
                res.loader_step_s.append(reply["seconds_per_step"])
                wait_quiet(srv.pid)
        resident = results["resident"]
        for name, srv in servers.items():
            res = results[name]
            res.span_cpu_s = tree_cpu_seconds(srv.pid) - span0[name]
            res.resident_step_s = list(resident.loader_step_s)
            res.sites = train.batch * args.train_steps  # images per block, for the CPU per 1,000 images
            res.epoch_s = [s * args.train_steps for s in res.loader_step_s]
            print(f"  train W={workers} {name:<13} {train.batch / statistics.median(res.loader_step_s):7.1f} img/s"
                  if res.ok and res.loader_step_s else f"  train W={workers} {name:<13} {res.error}", flush=True)
    finally:
        close_servers(servers)
    return [results[r] for r in ["resident", *rows]]


# --- object storage -------------------------------------------------------------------------------------------
@dataclass
class S3:
    proc: Any
    endpoint: str
    store_options: dict[str, Any]
    litdata_options: dict[str, Any]


def start_s3(fmt: Formats) -> S3:
    """moto's S3-compatible server on 127.0.0.1 (its own process), with every streaming format uploaded."""
    import boto3
    import s3fs

    from store_read import start_local_server

    proc, endpoint = start_local_server()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
        os.environ[k] = v  # row processes inherit them (obstore and tensorstore read the environment)
    store_options = {"key": "bench", "secret": "bench",
                     "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    litdata_options = {"endpoint_url": endpoint, "aws_access_key_id": "bench", "aws_secret_access_key": "bench",
                       "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    fs = s3fs.S3FileSystem(**store_options)
    t0 = time.perf_counter()
    for name in ("store", "wds", "wds_lz4", "litdata"):
        local = getattr(fmt, name)
        fs.put(str(local), f"{BUCKET}/{local.name}", recursive=True)
    log.info("uploaded the formats to %s in %.1f s", endpoint, time.perf_counter() - t0)
    return S3(proc, endpoint, store_options, litdata_options)


def s3_spec(base: RowSpec, s3: S3, fmt: Formats, cache_dir: str) -> RowSpec:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id="bench",
                          aws_secret_access_key="bench", region_name="us-east-1")

    def urls(folder: Path) -> list[str]:
        # presigned https-style URLs: WebDataset opens http(s) shards with its curl pipe (webdataset/gopen.py)
        return [client.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                                     "Key": f"{folder.name}/{p.name}"},
                                               ExpiresIn=24 * 3600) for p in sorted(folder.glob("*.tar"))]
    return replace(base, store=f"s3://{BUCKET}/{fmt.store.name}", storage_options=s3.store_options,
                   wds=urls(fmt.wds), wds_lz4=urls(fmt.wds_lz4), litdata=f"s3://{BUCKET}/{fmt.litdata.name}",
                   litdata_storage=s3.litdata_options, cache_dir=cache_dir)


# --- reporting ------------------------------------------------------------------------------------------------
def local_rows(results: list[RowResult], fmt: Formats, checks: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        f = ROW_FORMAT[r.row]
        between = r.span_cpu_s - sum(r.epoch_cpu_s) if r.epoch_cpu_s else float("nan")
        out.append({
            "section": r.section, "row": r.row, "workers": r.workers,
            "sites_per_s": round(r.sites_per_s, 1), "spread": round(_spread(r.epoch_s), 3) if r.epoch_s else "",
            "cpu_s_per_1000_sites": round(r.cpu_per_1000, 2),
            "cpu_between_epochs_s_per_1000": round(between / max(1, r.sites * len(r.epoch_s)) * 1000, 2)
            if r.epoch_s else "",
            "server_cpu_s_per_1000_sites": round(sum(r.server_cpu_s) / max(1, r.sites * len(r.epoch_s)) * 1000, 2)
            if r.server_cpu_s else "",
            "peak_rss_mb": round(r.peak_rss / 2**20), "peak_pss_mb": round(r.peak_pss / 2**20),
            "first_batch_s": round(r.first_batch_s, 3),
            "epoch_start_s": round(statistics.median(r.epoch_start_s), 3) if r.epoch_start_s else "", "disk_mb": round(fmt.disk_bytes.get(f, 0) / 2**20, 1),
            "format": f, "conversion_s": round(fmt.conversion_s.get(f, float("nan")), 1),
            "sites_per_epoch": r.sites, "repeats": len(r.epoch_s),
            "epoch_s": " ".join(f"{s:.3f}" for s in r.epoch_s),
            "check": checks.get(r.row, "") or "passed", "error": r.error.splitlines()[0] if r.error else ""})
    return out


def train_rows(results: list[RowResult], train: TrainSpec) -> list[dict[str, Any]]:
    out = []
    for r in results:
        med = statistics.median(r.loader_step_s) if r.loader_step_s else float("nan")
        res = statistics.median(r.resident_step_s) if r.resident_step_s else float("nan")
        n = r.sites * len(r.loader_step_s)  # images over the timed blocks
        out.append({"section": "train", "row": r.row, "workers": r.workers, "model": TRAIN_MODEL,
                    "crop": train.crop, "batch": train.batch, "img_per_s": round(train.batch / med, 1),
                    "resident_img_per_s": round(train.batch / res, 1), "loader_over_resident": round(med / res, 3),
                    "spread": round(_spread(r.loader_step_s), 3) if r.loader_step_s else "",
                    "cpu_s_per_1000_img": round(r.span_cpu_s / n * 1000, 2) if n else "",
                    "step_ms": " ".join(f"{s * 1e3:.1f}" for s in r.loader_step_s),
                    "error": r.error.splitlines()[0] if r.error else ""})
    return out


def print_local(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}\n{'row':<14}{'W':>2}{'sites/s':>9}{'spread':>7}{'cpu s/1k':>9}{'PSS MB':>8}{'RSS MB':>8}"
          f"{'1st batch s':>12}{'disk MB':>9}{'convert s':>10}  check / error")
    for r in rows:
        note = r["error"] or ("" if r["check"] == "passed" else r["check"])
        print(f"{r['row']:<14}{r['workers']:>2}{r['sites_per_s']:>9}{r['spread']!s:>7}{r['cpu_s_per_1000_sites']:>9}"
              f"{r['peak_pss_mb']:>8}{r['peak_rss_mb']:>8}{r['first_batch_s']:>12}{r['disk_mb']:>9}"
              f"{r['conversion_s']:>10}  {note[:90]}")


def ratios(rows: list[dict[str, Any]], section: str, speed_goal: float = 1.5) -> list[dict[str, Any]]:
    """Per W: cellio's best backend vs the best peer (sites/s), and their CPU per site; the goal is met at
    `speed_goal` x the best peer's sites/s (1.5 locally, 1.2 from object storage: issue 24) or the same sites/s at
    <= 0.6 x its CPU per site."""
    out = []
    for w in sorted({r["workers"] for r in rows}):
        ok = [r for r in rows if r["workers"] == w and not r["error"] and r["check"] == "passed"
              and r["sites_per_s"] == r["sites_per_s"]]
        mine = [r for r in ok if r["row"] in CELLIO]
        peers = [r for r in ok if r["row"] in PEERS]
        if not mine or not peers:
            continue
        best = max(mine, key=lambda r: r["sites_per_s"])
        peer = max(peers, key=lambda r: r["sites_per_s"])
        lean = min(peers, key=lambda r: r["cpu_s_per_1000_sites"])
        speed = best["sites_per_s"] / peer["sites_per_s"]
        cpu = best["cpu_s_per_1000_sites"] / peer["cpu_s_per_1000_sites"]
        met = speed >= speed_goal or (speed >= 0.95 and cpu <= 0.6)
        out.append({"section": section, "workers": w, "cellio_best": best["row"], "cellio_sites_per_s":
                    best["sites_per_s"], "best_peer": peer["row"], "peer_sites_per_s": peer["sites_per_s"],
                    "speed_ratio": round(speed, 2), "cpu_ratio_vs_best_peer": round(cpu, 2),
                    "leanest_peer": lean["row"], "cpu_ratio_vs_leanest_peer":
                    round(best["cpu_s_per_1000_sites"] / lean["cpu_s_per_1000_sites"], 2),
                    "goal": "met" if met else "not met"})
    return out


def print_ratios(rs: list[dict[str, Any]], title: str, goal: str) -> None:
    print(f"\n{title} ({goal})")
    for r in rs:
        print(f"  W={r['workers']}: {r['cellio_best']} {r['cellio_sites_per_s']:.0f} sites/s vs {r['best_peer']} "
              f"{r['peer_sites_per_s']:.0f} -> x{r['speed_ratio']:.2f} speed, CPU per site x"
              f"{r['cpu_ratio_vs_best_peer']:.2f} (vs the leanest peer {r['leanest_peer']}: x"
              f"{r['cpu_ratio_vs_leanest_peer']:.2f}) -> {r['goal']}")


def plot_local(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r for r in ROWS if any(x["row"] == r for x in rows)]
    ws = sorted({r["workers"] for r in rows})
    metrics = [("sites_per_s", "sites/s (higher is better)"), ("cpu_s_per_1000_sites", "CPU s per 1,000 sites"),
               ("peak_pss_mb", "peak PSS of the tree, MB")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(15, 4.8))
    width = 0.8 / max(1, len(ws))
    for ax, (key, label) in zip(axes, metrics):
        for k, w in enumerate(ws):
            vals = []
            for n in names:
                r = next((x for x in rows if x["row"] == n and x["workers"] == w), None)
                v = r[key] if r and not r["error"] and r["check"] == "passed" else 0
                vals.append(v if v == v else 0)
            ax.bar(np.arange(len(names)) + k * width, vals, width, label=f"W={w}")
        ax.set_xticks(np.arange(len(names)) + width * (len(ws) - 1) / 2, names, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_train(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r["error"]]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = np.arange(len(ok))
    ax.bar(x, [r["img_per_s"] for r in ok], 0.6, color=["grey" if r["row"] == "resident" else "C0" for r in ok])
    for i, r in enumerate(ok):
        ax.text(i, r["img_per_s"], f"x{r['loader_over_resident']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{r['row']}\nW={r['workers']}" for r in ok], fontsize=8)
    ax.set_ylabel("training images/s (label: loader / resident step time)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------------------
def parse_list(text: str, allowed: tuple[str, ...], what: str, p: argparse.ArgumentParser) -> list[str]:
    items = [x for x in text.split(",") if x]
    for x in items:
        if x not in allowed:
            p.error(f"{what}: unknown {x!r}; expected some of {allowed}")
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=256, help="about this many 512 px sites (synthesized once)")
    p.add_argument("--size", type=int, default=512, help="site side in pixels")
    p.add_argument("--data", default=str(DATA), help="where the PNG set and its formats are kept")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list from {ROWS}")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {SECTIONS}")
    p.add_argument("--workers", default="0,1,2", help="W values of the local section")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs (or training blocks); medians reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-crop", type=int, default=224, help="the CPU plan's crop (trainer/plan.py: 0.44 x site)")
    p.add_argument("--train-workers", default="0,1",
                   help="W values of the training section (the CPU plan loads in-process: W=0)")
    p.add_argument("--train-steps", type=int, default=4, help="timed steps per block")
    p.add_argument("--train-warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--s3-workers", default="2", help="W values of the object-storage section")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads in each row's process for the loader sections (0: torch's default; "
                        "1, as in DataLoader workers, keeps torch's OpenMP threads from fighting the loader's own)")
    p.add_argument("--check-workers", type=int, default=1, help="W of the pixel check")
    p.add_argument("--check-only", action="store_true", help="only the pixel check of every row")
    p.add_argument("--rebuild", action="store_true", help="convert the PNGs into every format again")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="peers", help="results file stem")
    args = p.parse_args(argv)
    rows = parse_list(args.rows, ROWS, "--rows", p)
    sections = parse_list(args.sections, SECTIONS, "--sections", p)
    ws = [int(w) for w in args.workers.split(",") if w]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("spdl", "cellio", "litdata", "botocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # torch's OpenMP threads spin-wait between parallel regions by default; on this 2-core machine that tripled the
    # training step's time and CPU, except in processes where other threads also call torch (SPDL's): libgomp then
    # throttles the spinning. PASSIVE for every row's process (they inherit it) so no row gains or loses by that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import cellio

    t_start = time.perf_counter()
    root = Path(args.data) / f"peers-{args.size}-{args.sites}"
    needed = tuple(f for f in FORMATS if f == "store" or any(ROW_FORMAT[r] == f for r in rows))
    fmt = prepare(root, sites=args.sites, size=args.size, formats=needed, rebuild=args.rebuild)
    store = cellio.open_store(fmt.store)
    if store.image_shape[0] != store.image_shape[1]:
        p.error(f"the check compares whole sites: expected square sites, found {store.image_shape}")
    if args.crop > store.image_shape[0] or args.train_crop > store.image_shape[0]:
        p.error(f"--crop {args.crop} / --train-crop {args.train_crop} exceed the {store.image_shape[0]} px sites")
    mean, std = (np.asarray(a[0], np.float64) for a in store.channel_stats("global"))
    base = base_spec(fmt, args, mean, std)
    print(f"{fmt.sites} sites of {store.image_shape} in {root}\nconversions (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in fmt.conversion_s.items())
          + "\ndisk (MB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in fmt.disk_bytes.items()), flush=True)
    from cellio.schema import PATH_COLUMNS

    paths = store.sites[list(PATH_COLUMNS)].to_numpy().tolist()
    reference = reference_fingerprints(fmt.raw, paths)

    print(f"\npixel check (augmentation off, whole sites, W={args.check_workers}) against the PNGs:", flush=True)
    checks = check_rows(base, rows, reference, args.check_workers)
    good = [r for r in rows if not checks[r]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args=vars(args), formats=fmt.to_json(), checks=checks,
                      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), peer_versions={
        m: _version(m) for m in ("webdataset", "litdata", "spdl", "lz4", "torchvision", "psutil", "moto")})
    report: dict[str, Any] = {"environment": env}
    if args.check_only:
        (out / f"{args.name}_env.json").write_text(json.dumps(report, indent=1, default=str))
        return 0 if all(not v for v in checks.values()) else 1

    with TreeMemory() as mem:
        if "local" in sections:
            results: list[RowResult] = []
            for w in ws:
                print(f"\nlocal, W={w}: warm-up epoch, then {args.repeats} interleaved epochs", flush=True)
                results += time_epochs("local", base, good, w, args, mem)
            results += [RowResult("local", r, w, error=checks[r]) for r in rows if checks[r] for w in ws]
            table = local_rows(results, fmt, checks)
            write_csv(out / f"{args.name}.csv", table)
            title = (f"{fmt.sites} sites {store.image_shape[0]} px, {args.crop} crops + D4 + normalise, batch "
                     f"{args.batch}, {os.cpu_count()} cores")
            plot_local(table, out / f"{args.name}.png", f"loaders from local disk (page cache): {title}")
            print_local(table, f"local disk: {title}")
            report["local"] = {"rows": table, "ratios": ratios(table, "local")}
            print_ratios(report["local"]["ratios"], "cellio's best backend vs the best peer at the same W",
                         "goal: >= 1.5x sites/s, or the same sites/s at <= 0.6x CPU per site")
        if "train" in sections:
            sites = store.sites
            codes = {s: i for i, s in enumerate(sorted(sites["sirna"].astype(str).unique()))}
            labels = np.array([codes[s] for s in sites["sirna"].astype(str)], dtype=np.int64)
            from cellio.schema import CELL_TYPES

            cts = np.array([CELL_TYPES.index(c) for c in sites["cell_type"]], dtype=np.int64)
            train = TrainSpec(model=TRAIN_MODEL, model_kwargs=TRAIN_KWARGS, num_classes=len(codes), labels=labels,
                              cell_types=cts, batch=args.batch, crop=args.train_crop,
                              threads=os.cpu_count() or 1, seed=args.seed)
            tres: list[RowResult] = []
            for w in [int(x) for x in args.train_workers.split(",") if x]:
                print(f"\ntraining step ({TRAIN_MODEL}, {args.train_crop} px, batch {args.batch}), W={w}",
                      flush=True)
                tres += time_training(base, good, w, train, args)
            ttable = train_rows(tres, train)
            write_csv(out / f"{args.name}_train.csv", ttable)
            plot_train(ttable, out / f"{args.name}_train.png",
                       f"{TRAIN_MODEL} training step fed by each loader ({args.train_crop} px, batch {args.batch})")
            print(f"\n{'row':<14}{'W':>2}{'img/s':>8}{'resident':>10}{'ratio':>7}{'cpu s/1k img':>14}")
            for r in ttable:
                print(f"{r['row']:<14}{r['workers']:>2}{r['img_per_s']:>8}{r['resident_img_per_s']:>10}"
                      f"{r['loader_over_resident']:>7}{r['cpu_s_per_1000_img']!s:>14}  {r['error'][:80]}")
            report["train"] = {"rows": ttable}
        if "s3" in sections:
            s3_rows = [r for r in good if r in STREAMING]
            s3 = start_s3(fmt)
            cache = tempfile.mkdtemp(prefix="peers_litdata_cache_")
            try:
                sbase = s3_spec(base, s3, fmt, cache)
                print(f"\npixel check of the object-storage rows ({s3.endpoint}):", flush=True)
                s3_checks = check_rows(sbase, s3_rows, reference, args.check_workers)
                shutil.rmtree(cache, ignore_errors=True)
                sres: list[RowResult] = []
                for w in [int(x) for x in args.s3_workers.split(",") if x]:
                    print(f"\nobject storage, W={w}", flush=True)
                    sres += time_epochs("s3", sbase, [r for r in s3_rows if not s3_checks[r]], w, args, mem,
                                        server_pid=s3.proc.pid)
                sres += [RowResult("s3", r, w, error=s3_checks[r]) for r in s3_rows if s3_checks[r]
                         for w in [int(x) for x in args.s3_workers.split(",") if x]]
                s3fmt = replace(fmt, disk_bytes={**fmt.disk_bytes}, conversion_s={**fmt.conversion_s})
                stable = local_rows(sres, s3fmt, s3_checks)
                write_csv(out / f"{args.name}_s3.csv", stable)
                plot_local(stable, out / f"{args.name}_s3.png",
                           f"streaming from a local S3-compatible server (moto), {fmt.sites} sites")
                print_local(stable, f"object storage ({s3.endpoint}, moto on this machine)")
                report["s3"] = {"rows": stable, "ratios": ratios(stable, "s3", speed_goal=1.2), "checks": s3_checks}
                print_ratios(report["s3"]["ratios"], "from object storage: cellio vs the best streaming peer",
                             "goal: >= 1.2x the best streaming peer")
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                s3.proc.terminate()
                s3.proc.wait()
    env["total_s"] = round(time.perf_counter() - t_start, 1)
    env["load_avg_end"] = os.getloadavg()
    (out / f"{args.name}_env.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out}/{args.name}*.csv, .png and {args.name}_env.json in {env['total_s']:.0f} s", flush=True)
    return 0


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - absent packages are recorded as None
        return None


if __name__ == "__main__":
    sys.exit(main())
