"""Shared benchmark helpers: timing with warm-up and medians, the environment record, CSV + PNG + ratio table.

    from _common import Case, compare, environment, report

    results = compare([Case("raw file", read_all, items=n, nbytes=total), Case("mine", mine, items=n, nbytes=total)],
                      warmup=1, repeats=5)
    report(results, "store_read", baseline="raw file", title="shuffled batch reads, 512x512x6 sites")

`compare` interleaves the cases repeat by repeat (A B C, A B C, ...), so a change in machine load hits every case
alike and the ratios stay honest on a shared machine; `measure` times one case on its own.

Run benchmark scripts from the repository root: `python benchmarks/<name>.py --help`.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent / "data"


@dataclass
class Result:
    """One measured configuration: median over repeats after warm-up."""

    name: str
    items: int                 # sites processed per repeat
    nbytes: int                # uint8 bytes delivered per repeat
    seconds: list[float]       # every timed repeat
    group: str = ""            # optional grouping for tables/plots (e.g. "baseline", "cellio")
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time (all threads) per repeat

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def items_per_s(self) -> float:
        return self.items / self.median_s

    @property
    def cpu_ms_per_item(self) -> float:
        """Median CPU milliseconds per site in this process (worker processes are not counted)."""
        return statistics.median(self.cpu_seconds) / self.items * 1e3 if self.cpu_seconds else float("nan")

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.median_s / 1e9

    def row(self, baseline: Result | None) -> dict[str, Any]:
        ratio = self.items_per_s / baseline.items_per_s if baseline else float("nan")
        spread = (max(self.seconds) - min(self.seconds)) / self.median_s if len(self.seconds) > 1 else 0.0
        return {"name": self.name, "group": self.group, "items": self.items, "repeats": len(self.seconds),
                "median_s": round(self.median_s, 5), "sites_per_s": round(self.items_per_s, 2),
                "gb_per_s": round(self.gb_per_s, 4), "ratio": round(ratio, 3), "spread": round(spread, 3),
                "cpu_ms_per_site": round(self.cpu_ms_per_item, 3),
                "cpu_ratio": round(baseline.cpu_ms_per_item / self.cpu_ms_per_item, 3) if baseline else float("nan"),
                **self.extra}


def measure(name: str, fn: Callable[[], Any], *, items: int, nbytes: int, warmup: int = 1, repeats: int = 5,
            group: str = "", **extra: Any) -> Result:
    """Run fn warmup times untimed, then `repeats` times timed (perf_counter)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    r = Result(name, items, nbytes, times, group, dict(extra), cpu)
    print(f"  {name:<34} {r.items_per_s:10.1f} sites/s  {r.gb_per_s:7.3f} GB/s  (median of {repeats})", flush=True)
    return r


@dataclass
class Case:
    """One configuration to time: fn() processes `items` sites delivering `nbytes` uint8 bytes."""

    name: str
    fn: Callable[[], Any]
    items: int
    nbytes: int
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def compare(cases: Sequence[Case], *, warmup: int = 1, repeats: int = 5) -> list[Result]:
    """Warm every case up, then time them round-robin `repeats` times; one Result per case (median reported)."""
    for c in cases:
        for _ in range(warmup):
            c.fn()
    times: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for k, c in enumerate(cases):
            c0, t0 = time.process_time(), time.perf_counter()
            c.fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    results = [Result(c.name, c.items, c.nbytes, t, c.group, dict(c.extra), u)
               for c, t, u in zip(cases, times, cpu)]
    for r in results:
        print(f"  {r.name:<40} {r.items_per_s:10.1f} sites/s  {r.gb_per_s:7.3f} GB/s", flush=True)
    return results


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - absent packages are simply not recorded
        return None


def environment(**extra: Any) -> dict[str, Any]:
    """What a reader needs to judge the numbers: machine, load, library versions, commit, arguments."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "git_commit": commit,
        "versions": {m: _version(m) for m in ("numpy", "zarr", "numcodecs", "tensorstore", "pillow",
                                              "opencv-python-headless", "nvidia-dali-cuda130", "torch")},
        **extra,
    }


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV whose columns are every key, in first-seen order (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def print_table(rows: Sequence[dict[str, Any]], title: str, baseline: str) -> None:
    print(f"\n{title}\n(ratio = sites/s relative to '{baseline}'; spread = (max-min)/median of the repeats; "
          f"cpu = this process's CPU ms per site, all threads, worker processes not counted)")
    print(f"{'configuration':<42}{'sites/s':>10}{'GB/s':>8}{'ratio':>7}{'spread':>7}{'cpu ms':>8}{'cpu ratio':>10}")
    for r in rows:
        print(f"{r['name']:<42}{r['sites_per_s']:>10.1f}{r['gb_per_s']:>8.3f}{r['ratio']:>7.3f}{r['spread']:>7.2f}"
              f"{r['cpu_ms_per_site']:>8.2f}{r['cpu_ratio']:>10.3f}")


def report(results: Sequence[Result], name: str, *, baseline: str, title: str, env: dict[str, Any] | None = None,
           out_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """Print the ratio table; write {name}.csv, {name}.json (rows + environment) and {name}.png."""
    base = next((r for r in results if r.name == baseline), None)
    rows = [r.row(base) for r in results]
    print_table(rows, title, baseline)
    write_csv(out_dir / f"{name}.csv", rows)
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"title": title, "baseline": baseline, "environment": env or environment(),
         "rows": rows, "raw": [asdict(r) for r in results]}, indent=2))
    _plot(rows, out_dir / f"{name}.png", title, baseline)
    print(f"\nwrote {out_dir / (name + '.csv')}, .json and .png")
    return rows


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    rates = [r["sites_per_s"] for r in rows]
    groups = sorted({r["group"] for r in rows})
    colors = {g: plt.cm.tab10(i) for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
    bars = ax.barh(names[::-1], rates[::-1], color=[colors[r["group"]] for r in rows[::-1]])
    for bar, r in zip(bars, rows[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['ratio']:.2f}x", va="center",
                fontsize=8)
    ax.set_xlim(0, max(rates) * 1.18 if rates else 1)
    ax.set_xlabel(f"sites/s (label: ratio to '{baseline}')")
    ax.set_title(title, fontsize=10)
    if len(groups) > 1:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=colors[g], label=g) for g in groups], fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
