"""cellio: cell-painting screens (RxRx1/2/3-core, JUMP, OME-Zarr plates) into trained models fast.

Public API (imported lazily so `import cellio` stays light and never pulls in torch or DALI):

    read_metadata, derive_plate_groups, PlateGroups      -- cellio.datasets.rxrx1 (metadata, plate_groups)
    synthesize                                           -- cellio.datasets.rxrx1.synth
    ingest, repair_store                                 -- cellio.ingestion (the write path)
    open_store, Store, verify_store                      -- cellio.store (the read path, verification)
    create_loader, Loader, select_sites, AugmentConfig, get_preset, list_presets, dali_available
                                                         -- cellio.loading
    validate_submission, download, submit, check_credentials  -- cellio.datasets.rxrx1.kaggle
    DatasetLayout, get_layout, list_datasets             -- cellio.datasets (a data set's shape, the registry)
    DatasetReader, get_dataset, find_dataset, register_dataset
                                                         -- cellio.datasets (how a data set's raw files are read)
    jump_reader                                          -- cellio.datasets.jump (a JUMP mirror's reader, options)
    ome_zarr_reader                                      -- cellio.datasets.ome_zarr (an OME-Zarr plate's reader)
    export_ome_zarr                                      -- cellio.export (a store as OME-Zarr HCS plates)
    to_dict, from_dict                                   -- cellio.records (dataclasses <-> JSON-able dicts)
    pid_alive                                            -- cellio.processes (is a process alive; zombies are not)
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

from .errors import *  # noqa: F401,F403  (the exception hierarchy is public)
from .errors import __all__ as _error_names

__version__ = "0.1.0"

# name -> module that defines it
_LAZY: dict[str, str] = {
    "read_metadata": "cellio.datasets.rxrx1.metadata",
    "derive_plate_groups": "cellio.datasets.rxrx1.plate_groups",
    "PlateGroups": "cellio.datasets.rxrx1.plate_groups",
    "synthesize": "cellio.datasets.rxrx1.synth",
    "ingest": "cellio.ingestion",
    "repair_store": "cellio.ingestion",
    "verify_store": "cellio.store.verify",
    "open_store": "cellio.store",
    "Store": "cellio.store",
    "create_loader": "cellio.loading",
    "Loader": "cellio.loading",
    "select_sites": "cellio.loading",
    "AugmentConfig": "cellio.loading",
    "get_preset": "cellio.loading",
    "list_presets": "cellio.loading",
    "validate_submission": "cellio.datasets.rxrx1.kaggle",
    "download": "cellio.datasets.rxrx1.kaggle",
    "submit": "cellio.datasets.rxrx1.kaggle",
    "check_credentials": "cellio.datasets.rxrx1.kaggle",
    "dali_available": "cellio.loading.pipeline",
    "DatasetLayout": "cellio.datasets",
    "get_layout": "cellio.datasets",
    "list_datasets": "cellio.datasets",
    "DatasetReader": "cellio.datasets",
    "get_dataset": "cellio.datasets",
    "find_dataset": "cellio.datasets",
    "register_dataset": "cellio.datasets",
    "jump_reader": "cellio.datasets.jump",
    "export_ome_zarr": "cellio.export",
    "ome_zarr_reader": "cellio.datasets.ome_zarr",
    "to_dict": "cellio.records",
    "from_dict": "cellio.records",
    "pid_alive": "cellio.processes",
}

__all__ = ["__version__", *_error_names, *_LAZY]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cellio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
