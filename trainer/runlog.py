"""What a run writes as it goes: `metrics.csv` (one row per validation), `log.jsonl` (every event) and TensorBoard.
Rank 0 only; the other ranks hold a disabled log."""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from cellio.schema import CELL_TYPES

__all__ = ["RunLog"]

log = logging.getLogger(__name__)


class RunLog:
    CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_n", "chance",
                  *(f"val_acc_{c}" for c in CELL_TYPES), "images_per_s", "elapsed_s")

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.out, self.enabled, self.tb = out, enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard logs are skipped (pip install tensorboard)")

    def event(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": kind, "step": step, **values, "time": time.time()}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def row(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: values.get(k, "") for k in self.CSV_FIELDS})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
