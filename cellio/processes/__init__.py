"""Processes: whether one is alive (`pid_alive`, public as `cellio.pid_alive`), and whether worker processes can
start from this program's main module (`require_importable_main`, checked before ingest, repair and synth start
their pools)."""
from __future__ import annotations

from .liveness import pid_alive
from .main_module import require_importable_main

__all__ = ["pid_alive", "require_importable_main"]
