"""The read side's loader: store -> augmented batches (docs/pipelines.md).

transforms/ the augmentations (config and presets, parameter draws, the torch reference); pipeline.py the DALI
graphs; sampling.py the epoch order per rank; selection.py which store rows a loader reads and what it yields for
each; sources.py the picklable source both backends read batches through; streaming.py the stream read mode (whole
shards, for object storage); loader.py `create_loader` and `Loader`.
"""
from __future__ import annotations

from .loader import BACKENDS, BATCH_BY, READ_MODES, Loader, create_loader
from .selection import select_sites
from .transforms import AugmentConfig, get_preset, list_presets, register_preset

__all__ = ["BACKENDS", "BATCH_BY", "READ_MODES", "Loader", "create_loader", "select_sites", "AugmentConfig", "get_preset",
           "list_presets", "register_preset"]
