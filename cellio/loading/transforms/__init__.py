"""Augmentations: the config and presets (config.py), per-sample random parameter draws (draws.py), and the pure-torch
reference of every op (reference.py); the DALI graph that applies the same parameters is cellio/loading/pipeline.py.

Random parameters are DRAWN (:func:`make_params`, numpy, no torch) separately from being APPLIED
(:func:`apply_torch` here, or the DALI graph in ``cellio.loading.pipeline``), the way torchvision.transforms.v2 splits
``make_params`` from ``transform``. Both backends receive the same parameters, so they produce the same pixels
(exactly for crops, D4 views, flips, intensity and normalization up to float32 rounding; within 1 grey level for
interpolated rotation / resized crops, whose uint8 results are rounded — see docs/pipelines.md).

Geometry of one sample (a site of H x W x C uint8 or uint16, channel-last; the grey levels of the config, an
intensity shift, the noise levels, are on the 0..255 scale and drawn scaled to the data's range, and gamma's
``255`` below is the pixel type's largest value):

1. ``window`` (y, x, h, w): the part of the site that is READ from the store. Without rotation it is exactly the
   output crop (S x S, placed by ``shift``); with ``rotation="any"`` it is an M x M margin window
   (M = S + 2*ceil((S*sqrt(2) - S) / 2)) around the crop, so the rotated centre crop has no black corners;
   with ``rrc_scale`` it is the random-resized-crop region (any size/aspect, later resized to S x S).
2. ``rotate`` by ``angle`` degrees about the window centre (bilinear, uint8 out), then centre crop S x S.
3. ``resize`` (random resized crop) to S x S (bilinear, no antialias, uint8 out).
4. D4 / flips as ``transpose`` then ``hflip`` then ``vflip`` (the D4 code and the extra random flips are folded
   into these three booleans; :data:`D4_TABLE` holds the decomposition, matching ``np.rot90``).
5. Photometric variation of the kind real screens have between plates (training only, each off unless
   configured), in float on the S x S output: Gaussian ``blur`` (focus; separable, reflect-101 borders),
   per-channel ``gamma`` (``255 (x / 255) ** g``), a smooth multiplicative ``illumination`` field
   (``exp(gx X + gy Y + v (X^2 + Y^2))`` per channel, X, Y in [-1, 1]) and ``noise``
   (``x + n sqrt(shot x + read^2)``, n a window of a fixed standard-normal bank at a drawn offset, so both
   backends add the same noise).
6. ``out = ((x * a + b) - mean) / std`` per channel in float32, NCHW, cast to ``dtype``.
"""
from __future__ import annotations

from .config import (DTYPES, MAX_BLUR_SIGMA, MIN_BLUR_SIGMA, MIN_STD, NORMALIZE_LEVELS, ROTATIONS, TTA_MODES,
                     AugmentConfig, check_fits, get_preset, list_presets, margin_size, register_preset)
from .draws import (D4_TABLE, NOISE_BANK_SCALE, PARAM_BLOCK, blur_window, d4_flags, decode_view, epoch_params,
                    eval_params, eval_views, field_coords, gaussian_kernel, make_params, noise_bank, noise_windows,
                    normalization_affine, warp_matrices)
from .reference import (apply_torch, crop, d4, flip_transpose, intensity, normalize, photometric, pixel_tensor,
                        resize, rotate, torch_dtype)

__all__ = [
    "ROTATIONS", "NORMALIZE_LEVELS", "DTYPES", "TTA_MODES", "MIN_STD", "MIN_BLUR_SIGMA", "MAX_BLUR_SIGMA",
    "AugmentConfig", "get_preset", "list_presets", "register_preset",
    "margin_size", "check_fits", "make_params", "epoch_params", "PARAM_BLOCK", "eval_views", "eval_params",
    "decode_view",
    "D4_TABLE", "d4_flags", "normalization_affine", "warp_matrices", "NOISE_BANK_SCALE",
    "blur_window", "gaussian_kernel", "field_coords", "noise_bank", "noise_windows",
    "d4", "flip_transpose", "crop", "rotate", "resize", "intensity", "normalize", "photometric", "apply_torch",
    "torch_dtype", "pixel_tensor",
]
