"""cellio: RxRx1 cell images into a trained model fast.

Public API (imported lazily so `import cellio` stays light and never pulls in torch or DALI):

    read_metadata, derive_plate_groups, PlateGroups      -- cellio.datasets.rxrx1 (metadata, plate_groups)
    synthesize                                           -- cellio.datasets.rxrx1.synth
    ingest, repair_store, open_store, Store              -- cellio.ingestion / cellio.store
    verify_store                                         -- cellio.store.verify
    create_loader, Loader, select_sites, AugmentConfig   -- cellio.loader / cellio.transforms
    validate_submission, download, submit, check_credentials  -- cellio.datasets.rxrx1.kaggle
    DatasetLayout, get_layout, list_datasets             -- cellio.datasets (a data set's shape, the registry)
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
    "create_loader": "cellio.loader",
    "Loader": "cellio.loader",
    "select_sites": "cellio.loader",
    "AugmentConfig": "cellio.transforms",
    "get_preset": "cellio.transforms",
    "list_presets": "cellio.transforms",
    "validate_submission": "cellio.datasets.rxrx1.kaggle",
    "download": "cellio.datasets.rxrx1.kaggle",
    "submit": "cellio.datasets.rxrx1.kaggle",
    "check_credentials": "cellio.datasets.rxrx1.kaggle",
    "dali_available": "cellio.pipeline",
    "DatasetLayout": "cellio.datasets",
    "get_layout": "cellio.datasets",
    "list_datasets": "cellio.datasets",
    "to_dict": "cellio.records",
    "pid_alive": "cellio.processes",
    "from_dict": "cellio.records",
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
