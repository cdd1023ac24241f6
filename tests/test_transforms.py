"""cellio.loading.transforms: config validation, presets, parameter draws, and the torch reference ops vs numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellio.errors import PipelineConfigError
from cellio.loading.transforms import (D4_TABLE, AugmentConfig, apply_torch, blur_window, check_fits, crop, d4, d4_flags,
                               decode_view, eval_params, eval_views, field_coords, flip_transpose, gaussian_kernel,
                               get_preset, intensity, list_presets, make_params, margin_size, noise_windows,
                               normalization_affine, normalize, photometric, resize, rotate, epoch_params,
                               warp_matrices)

H, W = 17, 11
C = 6  # channels of the sites drawn for (RxRx1's count)


@pytest.fixture
def img() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 6), dtype=np.uint8)


# --- config ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("crop_size", 0), ("crop_size", 3.5), ("rotation", "spin"), ("max_angle", 200), ("shift", -1),
    ("hflip", 1.5), ("rrc_scale", (0.9, 0.1)), ("intensity_scale", (0.0, 2.0)), ("intensity_shift", "x"),
    ("normalize", "well"), ("dtype", "int8"), ("blur_sigma", (2.0, 1.0)), ("blur_sigma", (-1.0, 1.0)),
    ("gamma", (0.0, 2.0)), ("illumination", 3.0), ("illumination", "strong"), ("noise", (1.0,)),
    ("noise", (-1.0, 0.5)),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(PipelineConfigError, match=field):
        AugmentConfig(**{field: value})


def test_rrc_and_arbitrary_rotation_are_exclusive():
    with pytest.raises(PipelineConfigError, match="rrc_scale"):
        AugmentConfig(rotation="any", rrc_scale=(0.5, 1.0))


def test_config_round_trips_through_dict():
    cfg = AugmentConfig(crop_size=9, rotation="any", shift=3, hflip=0.5, intensity_scale=(0.9, 1.1),
                        normalize="sample", dtype="bfloat16")
    d = cfg.to_dict()
    assert d["intensity_scale"] == [0.9, 1.1]
    assert AugmentConfig.from_dict(d) == cfg
    with pytest.raises(PipelineConfigError, match="unknown keys"):
        AugmentConfig.from_dict({**d, "colour": 1})


def test_presets_registry():
    assert {"d4_shift", "rotate_any", "eval", "none"} <= set(list_presets())
    assert get_preset("d4_shift").rotation == "d4"
    assert get_preset("eval").is_random is False
    with pytest.raises(PipelineConfigError, match="preset"):
        get_preset("nope")


def test_fit_checks_crop_and_rotation_margin():
    check_fits(AugmentConfig(crop_size=7, rotation="any"), (H, W))  # margin 11 fits 17x11 exactly
    assert margin_size(7) == 11 and margin_size(224) == 318 and (margin_size(224) - 224) % 2 == 0
    assert margin_size(224) >= 224 * math.sqrt(2)
    with pytest.raises(PipelineConfigError, match="crop_size"):
        check_fits(AugmentConfig(crop_size=12), (H, W))
    with pytest.raises(PipelineConfigError, match="margin"):
        check_fits(AugmentConfig(crop_size=9, rotation="any"), (H, W))


# --- parameter draws ---------------------------------------------------------------------------------------------
def test_make_params_shapes_ranges_and_determinism():
    cfg = AugmentConfig(crop_size=7, rotation="d4", hflip=0.5, intensity_scale=(0.8, 1.2), intensity_shift=(-2, 2))
    p = make_params(cfg, np.random.default_rng(1), 200, (H, W), C)
    assert p["window"].shape == (200, 4) and p["scale"].shape == (200, 6)
    y, x, h, w = p["window"].T
    assert (h == 7).all() and (w == 7).all() and (y >= 0).all() and (y + 7 <= H).all() and (x + 7 <= W).all()
    assert len(np.unique(y)) == H - 7 + 1 and len(np.unique(x)) == W - 7 + 1  # every position reachable
    assert set(p["d4"].tolist()) == set(range(8))
    assert (p["scale"] >= 0.8).all() and (p["scale"] <= 1.2).all()
    q = make_params(cfg, np.random.default_rng(1), 200, (H, W), C)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    a = epoch_params(cfg, seed=0, epoch=1, positions=np.arange(3000), image_hw=(H, W), channels=C)
    b = epoch_params(cfg, seed=0, epoch=1, positions=np.array([2999, 5, 1500]), image_hw=(H, W), channels=C)
    c = epoch_params(cfg, seed=0, epoch=2, positions=np.array([2999, 5, 1500]), image_hw=(H, W), channels=C)
    assert all(np.array_equal(a[k][[2999, 5, 1500]], b[k]) for k in a)  # a row depends on its position only
    assert any(not np.array_equal(b[k], c[k]) for k in b)


def test_photometric_draws_come_last_and_only_when_on():
    base = AugmentConfig(crop_size=7, rotation="d4", hflip=0.5, intensity_scale=(0.8, 1.2))
    photo = base.replace(blur_sigma=(0.0, 2.0), gamma=(0.8, 1.25), illumination=0.3, noise=(2.0, 0.5))
    p = make_params(base, np.random.default_rng(3), 50, (H, W), C)
    q = make_params(photo, np.random.default_rng(3), 50, (H, W), C)
    assert set(p) < set(q) and all(np.array_equal(p[k], q[k]) for k in p)  # geometry drawn as before
    assert q["blur_sigma"].shape == (50,) and q["gamma"].shape == (50, 6) and q["field"].shape == (50, 3, 6)
    assert (q["field"][:, 2] <= 0).all() and np.abs(q["field"][:, :2]).max() <= 0.3  # a vignette, gradients
    assert (q["noise_offset"] >= 0).all() and (q["noise_offset"] <= 7).all()  # bank 14 x 14 for 7 x 7 crops
    assert photo.is_random and photo.photometric and not photo.without_random().is_random
    assert photo.without_random().crop_size == 7 and get_preset("d4_photometric").photometric


def test_photometric_reference_ops():
    assert blur_window(0.1) == 1 and blur_window(1.0) == 7 and blur_window(1.01) == 9
    k = gaussian_kernel(1.5)
    assert len(k) == 11 and k.sum() == pytest.approx(1.0) and np.argmax(k) == 5 and np.allclose(k, k[::-1])
    rng = np.random.default_rng(0)
    n = 40
    flat = torch.full((n, 9, 9, 6), 50.0)
    cfg = AugmentConfig(crop_size=9, blur_sigma=(0.5, 3.0), gamma=(1.0, 1.0), illumination=0.0, noise=(0.0, 0.0))
    p = make_params(cfg, rng, n, (17, 11), C)
    # a flat image stays flat under blur (reflected borders), gamma 1, a zero field and zero noise
    assert torch.allclose(photometric(flat, p, cfg), flat, atol=1e-4)
    # blur keeps the mean away from the borders and lowers the variance of noise
    x = torch.from_numpy(rng.normal(100, 20, size=(n, 9, 9, 6)).astype(np.float32))
    blurred = photometric(x, p, AugmentConfig(crop_size=9, blur_sigma=(0.5, 3.0)))
    assert float(blurred.std()) < 0.8 * float(x.std())
    # gamma maps 0 -> 0 and 255 -> 255 and bends the middle the drawn way
    g = AugmentConfig(crop_size=9, gamma=(2.0, 2.0))
    ramp = torch.tensor([0.0, 127.5, 255.0]).repeat(n, 9, 9, 2)[..., :6]
    out = photometric(ramp, make_params(g, rng, n, (17, 11), C), g)
    assert torch.allclose(out[..., 0], ramp[..., 0]) and float(out[0, 0, 0, 1]) == pytest.approx(63.75, rel=1e-4)
    # the field is smooth, positive, and 1 where the coordinates are 0
    f = AugmentConfig(crop_size=9, illumination=0.5)
    pf = make_params(f, rng, n, (17, 11), C)
    lit = photometric(torch.ones(n, 9, 9, 6), pf, f)
    assert float(lit.min()) > 0 and torch.allclose(lit[:, 4, 4], torch.ones(n, 6), atol=1e-6)
    yy, xx = field_coords(9, 9)
    assert yy.shape == (9, 1, 1) and xx.shape == (1, 9, 1) and yy[4, 0, 0] == 0.0
    # read noise of std r: a dark image gets noise of about that std; offsets pick fixed windows of one bank
    nz = AugmentConfig(crop_size=9, noise=(3.0, 0.0))
    pn = make_params(nz, rng, n, (17, 11), C)
    pn["noise_read"][:] = 3.0
    noisy = photometric(torch.zeros(n, 9, 9, 6), pn, nz)
    assert float(noisy.std()) == pytest.approx(3.0, rel=0.1)
    assert np.array_equal(noise_windows(pn["noise_offset"], 9, C), noise_windows(pn["noise_offset"], 9, C))


def test_shift_modes_and_rotation_window():
    centre = make_params(AugmentConfig(crop_size=7, shift=False, rotation="none"), np.random.default_rng(0), 5,
                         (H, W), C)["window"]
    assert (centre == [(H - 7) // 2, (W - 7) // 2, 7, 7]).all()
    near = make_params(AugmentConfig(crop_size=7, shift=1, rotation="none"), np.random.default_rng(0), 100,
                       (H, W), C)["window"]
    assert np.abs(near[:, 0] - (H - 7) // 2).max() == 1
    rot = make_params(AugmentConfig(crop_size=7, rotation="any", max_angle=30), np.random.default_rng(0), 50,
                      (H, W), C)
    assert (rot["window"][:, 2:] == 11).all() and np.abs(rot["angle"]).max() <= 30


def test_rrc_windows_respect_scale_and_fit():
    cfg = AugmentConfig(crop_size=7, rrc_scale=(0.3, 0.6))
    win = make_params(cfg, np.random.default_rng(0), 100, (H, W), C)["window"]
    area = win[:, 2] * win[:, 3] / (H * W)
    assert (win[:, 0] + win[:, 2] <= H).all() and (win[:, 1] + win[:, 3] <= W).all()
    assert area.min() > 0.2 and area.max() < 0.75  # rounding of sides widens the range a little


def test_eval_views_bookkeeping():
    v = eval_views("grid9", dihedral=True)
    assert len(v) == 72 and len(set(v.tolist())) == 72
    cell, k = decode_view(v)
    assert set(cell.tolist()) == set(range(9)) and set(k.tolist()) == set(range(8))
    assert eval_views("center", dihedral=False).tolist() == [32]
    p = eval_params(AugmentConfig(crop_size=7), eval_views("grid9", False), (H, W), "grid9", C)
    assert p["window"][:, 0].tolist() == [0, 0, 0, 5, 5, 5, 10, 10, 10]
    assert p["window"][:, 1].tolist() == [0, 2, 4] * 3
    full = eval_params(AugmentConfig(crop_size=7), eval_views("full", False), (H, W), "full", C)
    assert full["window"].tolist() == [[0, 0, H, W]]


# --- torch reference ops -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(8))
def test_d4_equals_numpy_rot90_and_transposes(img, k):
    t = torch.from_numpy(img)
    expected = np.rot90(img if k < 4 else img.transpose(1, 0, 2), k % 4, axes=(0, 1))
    assert np.array_equal(d4(t, k).numpy(), expected)
    tr, hf, vf = D4_TABLE[k]
    assert np.array_equal(flip_transpose(t, tr, hf, vf).numpy(), expected)


def test_d4_views_are_the_eight_distinct_symmetries(img):
    sq = torch.from_numpy(img[:11, :11])
    views = {d4(sq, k).numpy().tobytes() for k in range(8)}
    assert len(views) == 8
    t, hf, vf = d4_flags(np.arange(8))
    assert t.tolist() == [False, True, False, True, True, False, True, False]
    assert len(set(zip(t.tolist(), hf.tolist(), vf.tolist()))) == 8


def test_crop_is_exact_and_checked(img):
    t = torch.from_numpy(img)
    assert np.array_equal(crop(t, 2, 3, 7, 5).numpy(), img[2:9, 3:8])
    with pytest.raises(PipelineConfigError, match="does not fit"):
        crop(t, 12, 0, 7, 7)


def test_rotate_quarter_turns_match_rot90_and_zero_is_identity(img):
    sq = torch.from_numpy(img[:11, :11].copy())
    assert torch.equal(rotate(sq, 0.0), sq)
    # counter-clockwise as displayed = np.rot90(k=1)
    assert torch.equal(rotate(sq, 90.0), torch.from_numpy(np.rot90(img[:11, :11], 1).copy()))
    assert torch.equal(rotate(sq, 180.0), torch.from_numpy(np.rot90(img[:11, :11], 2).copy()))
    assert rotate(sq, 33.0).dtype == torch.uint8


def test_resize_identity_and_shape(img):
    t = torch.from_numpy(img)
    assert torch.equal(resize(t, (H, W)), t)
    assert tuple(resize(t, (7, 7)).shape) == (7, 7, 6)


def test_intensity_and_normalize_fold_into_one_affine():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(4, 5, 6)).astype(np.float32))
    a, b = rng.uniform(0.8, 1.2, 6).astype(np.float32), rng.uniform(-3, 3, 6).astype(np.float32)
    mean, std = rng.uniform(5, 20, 6).astype(np.float32), rng.uniform(3, 10, 6).astype(np.float32)
    two_step = normalize(intensity(x, torch.from_numpy(a), torch.from_numpy(b)), torch.from_numpy(mean),
                         torch.from_numpy(std))
    m, s = normalization_affine(mean, std, a, b)
    torch.testing.assert_close(normalize(x, torch.from_numpy(m), torch.from_numpy(s)), two_step, rtol=1e-5,
                               atol=1e-5)


def test_apply_torch_end_to_end_layout_and_dtype(img):
    cfg = AugmentConfig(crop_size=7, rotation="d4", normalize="plate", dtype="bfloat16")
    p = make_params(cfg, np.random.default_rng(3), 2, (H, W), C)
    windows = [img[y:y + h, x:x + w] for y, x, h, w in p["window"]]
    mean, std = np.full((2, 6), 10.0, np.float32), np.full((2, 6), 5.0, np.float32)
    out = apply_torch(windows, p, mean, std, cfg)
    assert out.shape == (2, 6, 7, 7) and out.dtype == torch.bfloat16
    # pixel (r, c) of channel ch of sample 0 = normalized D4 view of the window, NCHW
    view = d4(torch.from_numpy(np.ascontiguousarray(windows[0])), int(p["d4"][0])).numpy().astype(np.float32)
    expected = ((view - 10.0) / 5.0).transpose(2, 0, 1)
    torch.testing.assert_close(out[0].float(), torch.from_numpy(expected).to(torch.bfloat16).float())
    with pytest.raises(PipelineConfigError, match="rows"):
        apply_torch(windows[:1], p, mean, std, cfg)


def _nn_warp(img: np.ndarray, m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour warp with a destination -> source matrix, [0, 0] = the first pixel's corner (DALI's rule)."""
    ys, xs = np.mgrid[0:out_hw[0], 0:out_hw[1]] + 0.5
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return img[np.floor(sy).astype(int), np.floor(sx).astype(int)]


def test_warp_matrices_reproduce_d4_and_flips_exactly(img):
    sq = img[:7, 2:9]
    for k in range(8):
        for extra_h in (False, True):
            t, hf, vf = D4_TABLE[k]
            p = {"window": np.array([[0, 2, 7, 7]]), "transpose": np.array([t]), "hflip": np.array([hf ^ extra_h]),
                 "vflip": np.array([vf]), "angle": np.zeros(1)}
            m = warp_matrices(p, AugmentConfig(crop_size=7))[0]
            expected = flip_transpose(torch.from_numpy(sq.copy()), t, hf ^ extra_h, vf).numpy()
            assert np.array_equal(_nn_warp(sq, m, (7, 7)), expected), (k, extra_h)


def test_warp_matrix_of_a_quarter_rotation_in_the_margin_window(img):
    cfg = AugmentConfig(crop_size=7, rotation="any")
    win = img[:11, :11]
    p = {"window": np.array([[0, 0, 11, 11]]), "transpose": np.array([False]), "hflip": np.array([False]),
         "vflip": np.array([False]), "angle": np.array([90.0])}
    m = warp_matrices(p, cfg)[0]
    # cos(90 deg) is 6e-17, not 0: nudge so floor() does not flip at the exact pixel edges the quarter turn hits
    expected = rotate(torch.from_numpy(win.copy()), 90.0).numpy()[2:9, 2:9]
    assert np.array_equal(_nn_warp(win, m + np.array([[0, 0, 1e-6], [0, 0, 1e-6]]), (7, 7)), expected)
