"""What a run writes as it goes: `metrics.csv` (one row per validation), `log.jsonl` (every event) and TensorBoard.
Rank 0 only; the other ranks hold a disabled log.

Each line lands whole or not at all (one append; a failed one is cut off again), and every checkpoint records the
logs' sizes: a resumed run cuts them back to those sizes (a fresh start to nothing) before it logs again, so the
lines of steps it redoes are not there twice and a header lost to a full disk is written again."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from cellio.errors import DiskFullError

from .disk import free_bytes, is_disk_full

__all__ = ["RunLog", "csv_fields"]

log = logging.getLogger(__name__)


def csv_fields(cell_types: Sequence[str]) -> tuple[str, ...]:
    """metrics.csv's columns: a validation accuracy per cell type (`val_acc_<cell type>`) among the rest."""
    return ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_n", "chance",
            *(f"val_acc_{c}" for c in cell_types), "images_per_s", "elapsed_s")


class RunLog:
    """The run's logs; `cell_types` (the layout's) name metrics.csv's per-cell-type accuracy columns."""

    FILES = ("metrics.csv", "log.jsonl")

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, cell_types: Sequence[str]):
        self.out, self.enabled, self.tb = out, enabled, None
        self.csv_fields = csv_fields(cell_types)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard logs are skipped (pip install tensorboard)")

    def event(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        self._append("log.jsonl", json.dumps({"event": kind, "step": step, **values, "time": time.time()}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def row(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.csv_fields, extrasaction="ignore")
        if self._size("metrics.csv") == 0:  # a new file, or one whose header a full disk kept out
            writer.writeheader()
        writer.writerow({k: values.get(k, "") for k in self.csv_fields})
        self._append("metrics.csv", text.getvalue())

    def sizes(self) -> dict[str, int] | None:
        """The logs' sizes in bytes, for a checkpoint (None on the ranks that do not log)."""
        return {name: self._size(name) for name in self.FILES} if self.enabled else None

    def rewind(self, sizes: dict[str, int] | None) -> None:
        """Cut each log back to `sizes` (a checkpoint's; {} for a fresh start): what came after was logged by steps
        the run now redoes. None (a checkpoint written before the sizes were recorded) leaves the logs alone."""
        if not self.enabled or sizes is None:
            return
        for name in self.FILES:
            keep = int(sizes.get(name, 0))
            if self._size(name) > keep:
                os.truncate(self.out / name, keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _size(self, name: str) -> int:
        try:
            return (self.out / name).stat().st_size
        except FileNotFoundError:
            return 0

    def _append(self, name: str, text: str) -> None:
        """`text` appended whole, or not at all: a write that fails is cut off again (a full disk is a named
        DiskFullError; the run resumes from its last checkpoint once there is space)."""
        path = self.out / name
        before = self._size(name)
        try:
            with open(path, "a", newline="", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            if path.exists():
                os.truncate(path, before)
            if is_disk_full(exc):
                raise DiskFullError(str(path), len(text.encode()), free_bytes(self.out),
                                    what="appending a line to this log",
                                    hint="the log is as it was before that line; free some space and rerun the same "
                                         "command: training resumes from its last checkpoint") from exc
            raise
