"""Shared fixtures: tiny synthetic RxRx1 sets and stores built with cellio's own writer (never the network).

GPU tests carry @pytest.mark.gpu and are skipped automatically without CUDA.
"""
from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """A tiny RxRx1-layout set: 8 classes, 4 cell types x (1 train + 1 test) experiments, 17x11 images."""
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("raw") / "rxrx1")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_raw):
    """The tiny set ingested into an uncompressed store, opened read-only."""
    from cellio.testing import make_store

    return make_store(tmp_path_factory.mktemp("store") / "tiny.zarr", tiny_raw)
