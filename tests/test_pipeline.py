"""DALI graphs in CPU mode vs the torch reference, one op at a time, on the tiny 17x11 store.

Exact ops (crops/shift, D4, flips, intensity, normalization) agree to float32 rounding; interpolated ops (arbitrary
rotation, random resized crop) produce uint8 intermediates in both backends and agree within 1 grey level.
"""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

import cellio
from cellio.errors import MissingDependencyError, PipelineConfigError
from cellio.loading.transforms import AugmentConfig

pytest.importorskip("nvidia.dali")

N_SITES = 24  # a slice of the tiny store keeps each pipeline run short


def _both(store, cfg: AugmentConfig, *, train: bool = True, **kw) -> tuple[list[dict], list[dict]]:
    kw.setdefault("indices", np.arange(N_SITES))
    kw.setdefault("datasets", None)
    out = []
    for backend in ("torch", "dali"):
        loader = cellio.create_loader(store, 8, train=train, augment=cfg, backend=backend, device="cpu",
                                      num_workers=0, rank=0, world_size=1, seed=7,
                                      last_batch="partial", **kw)
        out.append(list(loader))
    return out[0], out[1]


def _assert_same_meta(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for key in ("label", "cell_type", "index", "view", "site", "plate"):
            assert torch.equal(x[key], y[key]), key


EXACT = {
    "crop_shift": AugmentConfig(crop_size=7, rotation="none", shift=True),
    "d4": AugmentConfig(crop_size=7, rotation="d4", shift=False),
    "hflip": AugmentConfig(crop_size=7, rotation="none", shift=False, hflip=1.0),
    "vflip": AugmentConfig(crop_size=9, rotation="none", shift=True, vflip=1.0),
    "intensity": AugmentConfig(crop_size=7, rotation="none", intensity_scale=(0.7, 1.3), intensity_shift=(-5, 5)),
    "norm_global": AugmentConfig(crop_size=7, rotation="none", normalize="global"),
    "norm_experiment": AugmentConfig(crop_size=7, rotation="none", normalize="experiment"),
    "norm_sample": AugmentConfig(crop_size=7, rotation="none", normalize="sample"),
    "d4_all": AugmentConfig(crop_size=7, rotation="d4", hflip=0.5, vflip=0.5, intensity_scale=(0.9, 1.1)),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_ops_match_torch(tiny_store, name):
    a, b = _both(tiny_store, EXACT[name])
    _assert_same_meta(a, b)
    for x, y in zip(a, b):
        assert x["image"].shape == y["image"].shape == (len(x["label"]), 6, EXACT[name].crop_size,
                                                          EXACT[name].crop_size)
        torch.testing.assert_close(y["image"], x["image"], rtol=1e-5, atol=1e-5)


# photometric ops (blur, gamma, illumination, noise) run in float in both backends: float32 rounding apart
PHOTOMETRIC = {
    "blur": AugmentConfig(crop_size=9, rotation="d4", blur_sigma=(0.0, 2.5), normalize=None),
    "gamma": AugmentConfig(crop_size=9, rotation="none", gamma=(0.5, 2.0), normalize=None),
    "illumination": AugmentConfig(crop_size=9, rotation="d4", illumination=0.8, normalize=None),
    "noise": AugmentConfig(crop_size=9, rotation="none", noise=(4.0, 2.0), normalize=None),
    "all": AugmentConfig(crop_size=9, rotation="d4", intensity_scale=(0.7, 1.3), intensity_shift=(-3, 3),
                         blur_sigma=(0.0, 2.0), gamma=(0.8, 1.25), illumination=0.5, noise=(2.0, 0.5)),
}


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC))
def test_photometric_ops_match_torch(tiny_store, name):
    cfg = PHOTOMETRIC[name]
    a, b = _both(tiny_store, cfg)
    _assert_same_meta(a, b)
    plain = cfg.without_random().replace(rotation=cfg.rotation, shift=cfg.shift)  # the same draws, no photometric
    _, base = _both(tiny_store, plain)
    moved = 0.0
    for x, y, z in zip(a, b, base):
        torch.testing.assert_close(y["image"], x["image"], rtol=1e-4, atol=1e-4)
        if cfg.rotation == plain.rotation:
            moved = max(moved, float((x["image"] - z["image"]).abs().max()))
    assert moved > 1e-3  # the op did something (a no-op would pass the parity check too)


@pytest.mark.parametrize("cfg", [
    AugmentConfig(crop_size=7, rotation="any", normalize=None),
    AugmentConfig(crop_size=7, rotation="d4", rrc_scale=(0.2, 1.0), normalize=None),
], ids=["rotate_any", "random_resized_crop"])
def test_interpolated_ops_match_torch_within_one_grey_level(tiny_store, cfg):
    a, b = _both(tiny_store, cfg)
    _assert_same_meta(a, b)
    diff = torch.cat([(x["image"] - y["image"]).abs().flatten() for x, y in zip(a, b)]) * 255.0
    assert diff.max() <= 1.0 + 1e-3
    assert (diff > 0.5).float().mean() < 0.05  # off-by-one rounding is rare


def test_half_precision_output(tiny_store):
    cfg = AugmentConfig(crop_size=7, dtype="float16")
    a, b = _both(tiny_store, cfg)
    assert a[0]["image"].dtype == b[0]["image"].dtype == torch.float16
    for x, y in zip(a, b):
        torch.testing.assert_close(y["image"].float(), x["image"].float(), rtol=2e-3, atol=2e-3)


def test_eval_dihedral_views_equal_numpy_rot90(tiny_store):
    """TTA centre crop x 8 D4 views through DALI equal np.rot90 / transposes of the stored pixels exactly."""
    cfg = AugmentConfig(crop_size=7, normalize=None)
    a, b = _both(tiny_store, cfg, train=False, tta="center", dihedral=True, indices=np.arange(3))
    _assert_same_meta(a, b)
    images = torch.cat([y["image"] for y in b])
    index = torch.cat([y["index"] for y in b])
    view = torch.cat([y["view"] for y in b])
    assert len(images) == 3 * 8
    h, w, _ = tiny_store.image_shape
    y0, x0 = (h - 7) // 2, (w - 7) // 2
    for img, i, v in zip(images, index.tolist(), view.tolist()):
        site = tiny_store.read_one(i)[y0:y0 + 7, x0:x0 + 7]
        k = v % 8
        expected = np.rot90(site if k < 4 else site.transpose(1, 0, 2), k % 4, axes=(0, 1)).transpose(2, 0, 1)
        got = np.rint(img.numpy() * 255.0).astype(np.uint8)
        assert np.array_equal(got, expected), (i, v)


def test_parallel_workers_same_pixels_and_no_leftover_processes(tiny_store):
    cfg = EXACT["d4_all"]
    before = {p.pid for p in multiprocessing.active_children()}
    kw = dict(augment=cfg, backend="dali", device="cpu", rank=0, world_size=1, seed=7, indices=np.arange(N_SITES),
              datasets=None, last_batch="partial")
    serial = list(cellio.create_loader(tiny_store, 8, num_workers=0, **kw))
    loader = cellio.create_loader(tiny_store, 8, num_workers=1, **kw)
    parallel = list(loader)
    for x, y in zip(serial, parallel):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["index"], y["index"])
    assert {p.pid for p in multiprocessing.active_children()} - before  # kept for the next epoch ...
    loader.close()  # ... until closed
    leftover = {p.pid for p in multiprocessing.active_children()} - before
    assert not leftover, f"DALI worker processes left running: {leftover}"


def test_missing_dali_names_the_install_command(tiny_store, monkeypatch):
    import cellio.loading.pipeline as pipeline

    monkeypatch.setattr(pipeline, "dali_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install nvidia-dali-cuda130"):
        cellio.create_loader(tiny_store, 4, backend="dali", crop_size=7)
    # backend=None falls back to torch when DALI is missing
    assert cellio.create_loader(tiny_store, 4, crop_size=7, num_workers=0).backend == "torch"


def test_bad_device_fails_before_work(tiny_store):
    with pytest.raises(PipelineConfigError, match="device"):
        cellio.create_loader(tiny_store, 4, crop_size=7, device="tpu")


@pytest.mark.gpu
def test_gpu_dali_matches_torch_on_gpu(tiny_store):
    cfg = EXACT["d4_all"]
    out = []
    for backend in ("torch", "dali"):
        loader = cellio.create_loader(tiny_store, 8, augment=cfg, backend=backend, device="cuda", num_workers=0,
                                      rank=0, world_size=1, seed=7, indices=np.arange(N_SITES), datasets=None,
                                      last_batch="partial")
        out.append(list(loader))
    for x, y in zip(*out):
        assert x["image"].is_cuda and y["image"].is_cuda
        torch.testing.assert_close(y["image"], x["image"], rtol=1e-5, atol=1e-5)


def test_spawned_workers_give_the_same_batches(tiny_store):
    """spawn is what GPU runs use (DALI cannot fork once CUDA is initialised): the source must pickle."""
    from cellio.loading.pipeline import build_pipeline, close_pipeline, source_outputs
    from cellio.loading.sources import SiteSource

    cfg = EXACT["d4_all"]
    loader = cellio.create_loader(tiny_store, 8, augment=cfg, backend="dali", device="cpu", num_workers=0, rank=0,
                                  world_size=1, seed=7, indices=np.arange(16), datasets=None, last_batch="partial")
    expected = list(loader)
    src = SiteSource(tiny_store, loader.config, loader.sampler, loader._meta, train=True, views=loader.views,
                     tta=None, outputs=source_outputs(cfg, train=True))
    src.sampler.set_epoch(0)
    pipe = build_pipeline(src, cfg, train=True, device="cpu", batch_size=8, num_workers=1, start_method="spawn")
    try:
        for want in expected:
            image, meta = pipe.run()
            got = torch.from_dlpack(image.as_tensor())
            assert torch.equal(got, want["image"])
            assert np.array_equal(np.asarray(meta.as_tensor())[:, 2], want["index"].numpy())
    finally:
        close_pipeline(pipe)


def test_parallel_workers_survive_dask_exception_pickling(tiny_store):
    """dask.distributed installs tblib's exception reducers process-wide; forked DALI workers must still end epochs."""
    import copyreg

    tblib_ps = pytest.importorskip("tblib.pickling_support")
    saved = dict(copyreg.dispatch_table)
    tblib_ps.install()
    try:
        loader = cellio.create_loader(tiny_store, 8, augment="d4_shift", crop_size=7, backend="dali", device="cpu",
                                      num_workers=1, seed=3, indices=np.arange(16), datasets=None,
                                      last_batch="partial")
        seen = np.concatenate([b["index"].numpy() for b in loader])
        loader.close()
    finally:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(saved)
    assert sorted(seen.tolist()) == list(range(16))
