"""benchmarks/peers.py's correctness checks on a tiny set, so the benchmark cannot rot silently.

Every row whose package is installed (a row whose package is missing is skipped, naming the import error) must
deliver the PNGs' pixels site by site with the augmentation off, and every site exactly once per augmented epoch in
float32 (B, 6, crop, crop) batches. The checks themselves must catch a broken peer: a transposed site, a wrong
normalisation, a site missing or repeated, a batch of the wrong shape. 16 sites of 37 x 37 px (odd, so an off-by-one crop or a transpose shows).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

pytest.importorskip("torchvision", reason="the peers' augmentation is torchvision v2")
pytest.importorskip("psutil", reason="the benchmark measures process trees with psutil")

from _peer_formats import prepare  # noqa: E402
from _peer_rows import (ROWS, RowSpec, compare_fingerprints, missing_package, open_loader,  # noqa: E402
                        reference_fingerprints, run_epoch, uint8_fingerprints)

SIZE, CROP, BATCH = 37, 16, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, RowSpec, np.ndarray]:
    import cellio
    from cellio.schema import PATH_COLUMNS

    formats = tuple(f for f, need in (("store", None), ("npy", None), ("wds", "webdataset"),
                                      ("wds_lz4", "lz4"), ("litdata", "litdata"))
                    if need is None or _importable(need))
    fmt = prepare(tmp_path_factory.mktemp("peers"), sites=16, size=SIZE, workers=1, formats=formats)
    store = cellio.open_store(fmt.store)
    mean, std = (a[0] for a in store.channel_stats("global"))
    base = RowSpec(row="seed", workers=0, n_sites=fmt.sites, crop=CROP, batch=BATCH,
                   mean=tuple(map(float, mean)), std=tuple(map(float, std)), store=str(fmt.store), npy=str(fmt.npy),
                   wds=sorted(str(p) for p in fmt.wds.glob("*.tar")),
                   wds_lz4=sorted(str(p) for p in fmt.wds_lz4.glob("*.tar")), litdata=str(fmt.litdata))
    reference = reference_fingerprints(fmt.raw, store.sites[list(PATH_COLUMNS)].to_numpy().tolist())
    return fmt, base, reference


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def _check(spec: RowSpec, reference: np.ndarray, truth: tuple | None = None) -> str | None:
    spec = dataclasses.replace(spec, check=True)
    loader = open_loader(spec)
    try:
        r = run_epoch(loader, spec, 0, truth=truth or (spec.mean, spec.std))
    finally:
        loader.close()
    return compare_fingerprints(spec.row, r.fingerprints or {}, r.residual, reference)


@pytest.mark.parametrize("row", ROWS)
def test_every_row_delivers_the_pngs_pixels_and_every_site_once(tiny, row: str) -> None:
    missing = missing_package(row)
    if missing:
        pytest.skip(f"{row}: {missing}")
    fmt, base, reference = tiny
    assert fmt.sites == 16 and reference.shape == (16, 6, 3)
    spec = dataclasses.replace(base, row=row)
    assert _check(spec, reference) is None
    loader = open_loader(spec)  # augmented: random crops, D4, normalised; run_epoch raises unless exact-once
    try:
        for epoch in (0, 1):
            r = run_epoch(loader, spec, epoch)
            assert r.sites == 16 and r.seconds > 0
    finally:
        loader.close()


@pytest.mark.parametrize("row", ["wds", "cellio_dali"])
def test_worker_processes_split_an_epoch_exactly_once(tiny, row: str) -> None:
    missing = missing_package(row)
    if missing:
        pytest.skip(f"{row}: {missing}")
    _, base, reference = tiny
    spec = dataclasses.replace(base, row=row, workers=2)
    assert _check(spec, reference) is None
    loader = open_loader(spec)
    try:
        assert run_epoch(loader, spec, 0).sites == 16
    finally:
        loader.close()


def test_a_transposed_site_fails_the_check(tiny, tmp_path: Path) -> None:
    fmt, base, reference = tiny
    bad = tmp_path / "npy"
    bad.mkdir()
    for i in range(fmt.sites):  # site 3 stored H/W-swapped: its channel sums are unchanged, its moments are not
        a = np.load(fmt.npy / f"{i:06d}.npy")
        np.save(bad / f"{i:06d}.npy", np.ascontiguousarray(a.transpose(0, 2, 1)) if i == 3 else a)
    msg = _check(dataclasses.replace(base, row="seed", npy=str(bad)), reference)
    assert msg is not None and "1 of 16 sites differ" in msg and "site 3" in msg


def test_a_wrong_normalisation_fails_the_check(tiny) -> None:
    _, base, reference = tiny
    spec = dataclasses.replace(base, row="seed", std=tuple(s * 1.3 for s in base.std))
    msg = _check(spec, reference, truth=(base.mean, base.std))
    assert msg is not None and "residual" in msg


def test_an_epoch_with_a_site_missing_or_repeated_fails(tiny) -> None:
    import torch

    _, base, _ = tiny

    class Broken:  # a loader that drops site 15 and repeats site 0
        def epoch(self, epoch: int):
            for start in range(0, 15, BATCH):
                ids = torch.arange(start, min(start + BATCH, 15))
                ids[0] = 0
                yield ids, torch.zeros(len(ids), 6, CROP, CROP)

        def close(self) -> None:
            pass
    with pytest.raises(AssertionError, match=r"delivered 15 sites, 3 missing and 1 repeated"):
        run_epoch(Broken(), dataclasses.replace(base, row="seed"), 0)
    with pytest.raises(AssertionError, match=r"expected float32 \(5, 6, 17, 17\)"):
        run_epoch(Broken(), dataclasses.replace(base, row="seed", crop=CROP + 1), 0)


def test_fingerprints_tell_a_transposed_or_flipped_site_apart() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 6, 17, 17), dtype=np.int64)
    fp = uint8_fingerprints(a)
    assert fp.shape == (1, 6, 3) and np.array_equal(fp[0, :, 0], a.sum(axis=(2, 3))[0])
    for other in (a.transpose(0, 1, 3, 2), a[:, :, ::-1], a[:, :, :, ::-1]):
        same_sum = uint8_fingerprints(other)[0, :, 0]
        assert np.array_equal(same_sum, fp[0, :, 0])
        assert not np.array_equal(uint8_fingerprints(other), fp)
    b = rng.integers(0, 256, (2, 6, 17, 11), dtype=np.int64)  # non-square: rows and columns weighted apart
    assert uint8_fingerprints(b).shape == (2, 6, 3)


def test_tree_cpu_counts_a_worker_that_already_exited() -> None:
    import os

    from _tree import tree_cpu_seconds

    before = tree_cpu_seconds(os.getpid())
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    subprocess.run([sys.executable, "-c", code], check=True)  # run, exit and reaped before we look again
    assert tree_cpu_seconds(os.getpid()) - before >= 0.25


def test_a_row_process_times_epochs_and_reports_a_broken_row(tiny, tmp_path: Path) -> None:
    from _peer_server import RowError, RowServer

    _, base, _ = tiny
    server = RowServer(dataclasses.replace(base, row="seed"), str(BENCH.parent))
    try:
        warm = server.call("warmup")
        assert warm["sites"] == 16 and 0 < warm["first_batch_s"] <= warm["seconds"]
        assert server.call("epoch", epoch=1)["sites"] == 16
    finally:
        server.close()
    broken = RowServer(dataclasses.replace(base, row="seed", npy=str(tmp_path / "absent")), str(BENCH.parent))
    try:
        with pytest.raises(RowError, match="FileNotFoundError"):
            broken.call("warmup")
    finally:
        broken.close()
