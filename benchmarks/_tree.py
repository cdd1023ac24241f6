"""CPU time and memory of a whole process tree: a process, its worker processes, and all their threads.

    cpu = tree_cpu_seconds(pid)            # user + system of every live process in the tree, plus what its exited
                                           # (reaped) children used: a worker that ran and exited still counts
    with TreeMemory(pid) as mem:           # peak RSS (summed over the tree) and peak PSS while the block runs
        ...
    mem.peak_rss, mem.peak_pss

Linux's /proc is the source (via psutil for CPU). Two memory figures because they answer different questions:
RSS summed over a forked tree counts every shared page (torch's libraries, the parent's heap before fork) once per
process, so it overstates what N workers cost; PSS splits each shared page between the processes mapping it, so the
tree's PSS sum is what the tree really holds. RSS is cheap to read (/proc/PID/statm, ~0.1 ms) and is sampled every
`interval` seconds; PSS needs a walk of the page tables (/proc/PID/smaps_rollup, ~15 ms for a torch process), so
it is read only when the RSS sum reaches a new peak, at most once per `pss_interval` seconds.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

_PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_pids(pid: int) -> list[int]:
    """pid and every live descendant (recursive)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by pid's tree, exited workers included.

    Each live process counts its own time plus its reaped children's (the kernel adds a child's time to its
    parent's when the parent waits for it), so a worker that exited and was joined still counts, exactly once: at
    any instant a process is either alive (counted directly) or reaped (counted in its parent)."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            t = psutil.Process(p).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited between listing and reading: its parent counts it once it is reaped
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int, pss: bool = False) -> int:
    """Summed RSS (or PSS) of pid's tree in bytes."""
    total = 0
    for p in tree_pids(pid):
        try:
            total += _pss(p) if pss else _rss(p)
        except (OSError, ValueError):
            continue
    return total


class TreeMemory:
    """Samples the tree of one process in a background thread; `watch(pid)` switches the tree being watched."""

    def __init__(self, pid: int | None = None, interval: float = 0.05, pss_interval: float = 1.0):
        self.interval, self.pss_interval = interval, pss_interval
        self.peaks: dict[int, dict[str, int]] = {}
        self._pid = pid
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def watch(self, pid: int | None) -> None:
        with self._lock:
            self._pid = pid

    def peak(self, pid: int) -> dict[str, int]:
        with self._lock:
            return dict(self.peaks.get(pid, {"rss": 0, "pss": 0}))

    def _run(self) -> None:
        last_pss = 0.0
        while not self._stop.wait(self.interval):
            with self._lock:
                pid = self._pid
            if pid is None:
                continue
            rss = tree_memory(pid)
            with self._lock:
                peak = self.peaks.setdefault(pid, {"rss": 0, "pss": 0})
                new_peak = rss > peak["rss"] * 1.01
                peak["rss"] = max(peak["rss"], rss)
            now = time.monotonic()
            if (new_peak or peak["pss"] == 0) and now - last_pss >= self.pss_interval:
                pss = tree_memory(pid, pss=True)
                last_pss = now
                with self._lock:
                    peak["pss"] = max(peak["pss"], pss)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def wait_quiet(pid: int, *, window: float = 0.25, quiet_cpu: float = 0.02, timeout: float = 15.0) -> float:
    """Block until pid's tree uses less than `quiet_cpu` CPU seconds in a `window` (its workers have filled their
    buffers or stopped); return the seconds waited. Interleaved timing calls this between rows so one row's
    background prefetch never runs inside the next row's timed window."""
    t0 = time.monotonic()
    last = tree_cpu_seconds(pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = tree_cpu_seconds(pid)
        if now - last < quiet_cpu:
            break
        last = now
    return time.monotonic() - t0
