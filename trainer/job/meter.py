"""Wall time and peak memory (RSS) of each step of a run: the rehearsal's (`trainer.job.rehearse`) instrument.

    meter = StepMeter()
    with meter("ingest"):            # steps nest: ("predict", then "predict: test" inside it)
        ...
    meter.records                    # one dict per step: seconds, peak RSS of this process and of its children

How memory is measured: on entering a step the kernel's peak-RSS mark of this process is reset
(`/proc/self/clear_refs` = 5), so `VmHWM` read on exit is this process's exact peak during the step; a thread
samples the resident memory of the whole process tree (this process plus every child: synth and ingest workers,
torchrun) every `interval` seconds (psutil), which catches children the mark cannot see.
`peak_rss` is the larger of the two. Where the mark cannot be reset (not Linux, no permission) the sampled figure
alone is reported (`exact: false`). `cpu_s` is the CPU time the step used, this process plus the children that
ended within it (`resource.getrusage`): on a shared machine it says what the step costs when wall time says how
busy the neighbours were. A step that is not entered (a resumed run skipped it) is not recorded.

`JobOptions.meter` and `run_chain(..., meter=...)` take any callable name -> context manager (the chain's `Meter`,
trainer/infer/chain/steps.py, where its `no_meter` default is).
"""
from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["StepMeter"]


def _read_hwm() -> int | None:
    """This process's peak RSS mark (VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Samples the RSS of this process and its descendants until stopped; keeps the maxima."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_tree = 0
        self.peak_children = 0

    def sample(self) -> None:
        import psutil

        main = self.proc.memory_info().rss
        kids = 0
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids += child.memory_info().rss
        self.peak_tree = max(self.peak_tree, main + kids)
        self.peak_children = max(self.peak_children, kids)

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):
                self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        with contextlib.suppress(Exception):
            self.sample()


class StepMeter:
    """Records wall time and peak RSS per step (see the module docstring); nested steps are recorded too, and a
    parent's peak includes its children's."""

    def __init__(self, interval: float = 0.2, on_record: Callable[[dict[str, Any]], None] | None = None):
        self.interval = interval
        self.records: list[dict[str, Any]] = []
        self.on_record = on_record
        self._stack: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[dict[str, Any]]:
        if self._stack:  # fold the parent's peak so far in before the mark is reset for this step
            parent = self._stack[-1]
            parent["hwm"] = max(parent["hwm"], _read_hwm() or 0)
        state = {"name": name, "hwm": 0, "nested_peak": 0, "exact": _reset_hwm()}
        self._stack.append(state)
        sampler = _Sampler(self.interval)
        sampler.start()
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        record: dict[str, Any] = {"step": name, "depth": len(self._stack) - 1}
        try:
            yield record
        finally:
            seconds = time.perf_counter() - t0
            sampler.stop()
            self._stack.pop()
            hwm = max(state["hwm"], _read_hwm() or 0) if state["exact"] else 0
            record.update(seconds=round(seconds, 3), cpu_s=round(_cpu_seconds() - cpu0, 3),
                          peak_rss=max(hwm, sampler.peak_tree, state["nested_peak"]), peak_rss_main=hwm,
                          peak_rss_children=sampler.peak_children, exact=state["exact"])
            if self._stack:
                self._stack[-1]["hwm"] = max(self._stack[-1]["hwm"], hwm)
                # the parent's sampler ran all along, but at other instants: it can miss a peak this one caught
                self._stack[-1]["nested_peak"] = max(self._stack[-1]["nested_peak"], record["peak_rss"])
            self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)
