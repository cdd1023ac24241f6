"""DEST/.cellio-download.json: which competition files were fetched completely, and which zips extracted."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..layout import KAGGLE_SLUG

__all__ = ["MANIFEST_NAME", "Manifest"]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".cellio-download.json"  # per destination: what was fetched completely, and extracted


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """DEST/.cellio-download.json: files fetched completely (remote and local size) and zips fully extracted."""

    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    extracted: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, dest: Path) -> Manifest:
        path = dest / MANIFEST_NAME
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, dict(data.get("files", {})), dict(data.get("extracted", {})))
        except (json.JSONDecodeError, AttributeError, TypeError):
            log.warning("Ignoring the unreadable download manifest %s; files are re-checked against Kaggle", path)
            return cls(path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format_version": 1, "slug": KAGGLE_SLUG, "files": self.files,
                                   "extracted": self.extracted}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def is_complete(self, dest: Path, name: str, remote_size: int | None) -> bool:
        local = dest / name
        if not local.is_file():
            return False
        size = local.stat().st_size
        entry = self.files.get(name)
        if entry is not None:
            same_remote = not remote_size or not entry.get("remote_bytes") or entry["remote_bytes"] == remote_size
            return entry.get("bytes") == size and same_remote
        # A file put there by hand or by the kaggle CLI: adopt it only when its size is the listed size.
        return bool(remote_size) and size == remote_size

    def mark_file(self, name: str, remote_size: int, size: int) -> None:
        self.files[name] = {"remote_bytes": remote_size, "bytes": size, "completed": _now()}
        self.save()

    def mark_extracted(self, zip_path: Path, members: int) -> None:
        self.extracted[zip_path.name] = {"bytes": zip_path.stat().st_size, "members": members,
                                         "completed": _now()}
        self.save()

    def is_extracted(self, zip_name: str, size: int) -> bool:
        entry = self.extracted.get(zip_name)
        return entry is not None and entry.get("bytes") == size
