"""The pure-torch reference of every op (one HWC sample at a time unless said otherwise; CPU or CUDA tensors), and
`apply_torch`, which applies drawn parameters to a batch the way the DALI graph does (the torch backend's
augmentation, and the reference the parity tests hold DALI to)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ...errors import PipelineConfigError
from .config import AugmentConfig
from .draws import field_coords, gaussian_kernel, noise_windows, normalization_affine

if TYPE_CHECKING:  # torch stays a lazy import: importing the transforms must not pull it in
    import torch

__all__ = ["torch_dtype", "pixel_tensor", "d4", "flip_transpose", "crop", "rotate", "resize", "intensity",
           "normalize", "photometric", "apply_torch"]

# pixel types of read windows -> the largest value (the top of the data's range: gamma, rounding after a warp)
_PIXEL_MAX = {"uint8": 255, "uint16": 65535}


# torch reference ops: one HWC sample (uint8, uint16 carried as int32, or float) at a time unless said otherwise;
# CPU or CUDA tensors
def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def d4(x: "torch.Tensor", k: int) -> "torch.Tensor":
    """Dihedral view k of an HW... tensor: np.rot90(x, k % 4) for k < 4, of x transposed for k >= 4."""
    import torch

    y = x.transpose(0, 1) if int(k) >= 4 else x
    return torch.rot90(y, int(k) % 4, dims=(0, 1))


def flip_transpose(x: "torch.Tensor", transpose: bool, hflip: bool, vflip: bool) -> "torch.Tensor":
    """transpose (H <-> W), then flip W, then flip H: the form both backends apply D4 views and flips in."""
    if transpose:
        x = x.transpose(0, 1)
    if hflip:
        x = x.flip(1)
    if vflip:
        x = x.flip(0)
    return x


def crop(x: "torch.Tensor", y0: int, x0: int, h: int, w: int) -> "torch.Tensor":
    if y0 < 0 or x0 < 0 or y0 + h > x.shape[0] or x0 + w > x.shape[1]:
        raise PipelineConfigError(f"crop ({y0}, {x0}, {h}, {w}) does not fit in an image of {tuple(x.shape[:2])}")
    return x[y0:y0 + h, x0:x0 + w]


def pixel_tensor(x: Any, device: Any = None) -> "torch.Tensor":
    """A read window (numpy or torch, uint8 or uint16) as a torch tensor on `device`: uint8 stays uint8, uint16
    becomes int32 (exact; torch's uint16 lacks most ops), so every op below sees a type it supports."""
    import torch

    if isinstance(x, torch.Tensor):
        t = x
    else:
        a = np.ascontiguousarray(x)
        t = torch.from_numpy(a.astype(np.int32) if a.dtype == np.uint16 else a)
    if t.dtype == torch.uint16:
        t = t.to(torch.int32)
    return t if device is None else t.to(device)


def _round_like(y: "torch.Tensor", like: "torch.Tensor", top: float = 255.0) -> "torch.Tensor":
    """An interpolated image in the form the DALI graph has it: uint8 rounded back to uint8 (DALI's uint8 warps
    do), 16-bit pixels (int32 here) left in float (the graph resamples them in float: DALI warps no uint16)."""
    import torch

    if like.dtype == torch.uint8:
        return y.round().clamp_(0, top).to(torch.uint8)
    if not like.dtype.is_floating_point:
        return y
    return y.to(like.dtype)


def rotate(x: "torch.Tensor", angle: float, top: float = 255.0) -> "torch.Tensor":
    """Rotate an HWC image by `angle` degrees counter-clockwise (as displayed, y down) about its centre, keeping its
    size; bilinear, zeros outside. Pixel centres at i + 0.5, like DALI's fn.rotate(keep_size=True). uint8 images
    are rounded back into 0..top (`_round_like`)."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[0], x.shape[1]
    dev = x.device
    th = math.radians(float(angle))
    c, s = math.cos(th), math.sin(th)
    ys = torch.arange(h, device=dev, dtype=torch.float64) + 0.5 - h / 2.0
    xs = torch.arange(w, device=dev, dtype=torch.float64) + 0.5 - w / 2.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # inverse map: output (x, y) samples input R(-angle) (x, y) in a y-down frame
    src_x = c * xx - s * yy + w / 2.0
    src_y = s * xx + c * yy + h / 2.0
    grid = torch.stack([src_x * 2.0 / w - 1.0, src_y * 2.0 / h - 1.0], dim=-1)[None].to(torch.float32)
    img = x.permute(2, 0, 1)[None].to(torch.float32)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _round_like(out[0].permute(1, 2, 0), x, top)


def resize(x: "torch.Tensor", size: tuple[int, int], top: float = 255.0) -> "torch.Tensor":
    """Bilinear resize of an HWC image to (h, w), half-pixel centres, no antialias (DALI fn.resize, antialias=False);
    uint8 images are rounded back into 0..top (`_round_like`)."""
    import torch.nn.functional as F

    img = x.permute(2, 0, 1)[None].float()
    out = F.interpolate(img, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                        antialias=False)
    return _round_like(out[0].permute(1, 2, 0), x, top)


def intensity(x: "torch.Tensor", a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Per-channel x * a + b on channel-last float tensors (a, b broadcast over the last dim)."""
    return x * a + b


def normalize(x: "torch.Tensor", mean: "torch.Tensor", std: "torch.Tensor") -> "torch.Tensor":
    """Per-channel (x - mean) / std on channel-last float tensors."""
    return (x - mean) / std


def _reflect101(n: int, r: int) -> np.ndarray:
    """Indices of an axis of n padded by r on each side, mirrored without repeating the edge (DALI's border)."""
    i = np.abs(np.arange(-r, n + r))
    if n == 1:
        return np.zeros_like(i)
    i = i % (2 * n - 2)
    return np.where(i >= n, 2 * n - 2 - i, i)


def photometric(x: "torch.Tensor", params: Mapping[str, np.ndarray], cfg: AugmentConfig,
                top: float = 255.0) -> "torch.Tensor":
    """Blur, gamma, illumination field and noise (each when on) of float (B, S, S, C) grey levels in 0..top (the
    pixel type's largest value), in that order, exactly as the DALI graph does them
    (cellio.loading.pipeline.photometric_graph)."""
    import torch

    b, h, w, c = x.shape
    dev = x.device

    def tensor(a: Any) -> "torch.Tensor":
        return torch.as_tensor(np.asarray(a, np.float32), device=dev)

    if cfg.blur_sigma is not None:
        rows = []
        for i in range(b):
            k = gaussian_kernel(float(params["blur_sigma"][i])).astype(np.float32)
            y = x[i]
            if len(k) > 1:
                r = len(k) // 2
                for axis, n in ((0, h), (1, w)):
                    idx = torch.as_tensor(_reflect101(n, r), device=dev)
                    p = y.index_select(axis, idx)
                    acc = torch.zeros_like(y)
                    for j, kj in enumerate(k):
                        acc += float(kj) * p.narrow(axis, j, n)
                    y = acc
            rows.append(y)
        x = torch.stack(rows)
    if cfg.gamma is not None:
        x = top * torch.pow(x / top, tensor(params["gamma"])[:, None, None, :])
    if cfg.illumination is not None:
        yy, xx = (tensor(v)[None] for v in field_coords(h, w))
        f = tensor(params["field"])
        gx, gy, v = f[:, 0][:, None, None, :], f[:, 1][:, None, None, :], f[:, 2][:, None, None, :]
        x = x * torch.exp(gx * xx + gy * yy + v * (xx * xx + yy * yy))
    if cfg.noise is not None:
        n = torch.as_tensor(noise_windows(params["noise_offset"], h, c), device=dev)
        shot = tensor(params["noise_shot"])[:, None, None, None]
        read = tensor(params["noise_read"])[:, None, None, None]
        x = x + n * torch.sqrt(torch.clamp(shot * x + read * read, min=0.0))
    return x


def _as_tensor(x: Any, device: Any) -> "torch.Tensor":
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _pixel_type(x: Any) -> str | None:
    """"uint8" / "uint16" of a read window (numpy, or torch where uint16 windows arrive as int32 or uint16)."""
    import torch

    if isinstance(x, torch.Tensor):
        return {torch.uint8: "uint8", torch.uint16: "uint16", torch.int32: "uint16"}.get(x.dtype)
    name = np.asarray(x).dtype.name
    return name if name in _PIXEL_MAX else None


def apply_torch(batch: "torch.Tensor | Sequence[Any]", params: Mapping[str, np.ndarray], mean: np.ndarray,
                std: np.ndarray, cfg: AugmentConfig, device: Any = None) -> "torch.Tensor":
    """Apply drawn parameters to B read windows: uint8 or uint16 (B, h, w, C) tensor/array or a list of
    (h_i, w_i, C) (random resized crops differ in size; uint16 may come as int32 tensors, `pixel_tensor`) ->
    cfg.dtype (B, C, S, S) on `device` (default: the batch's).

    mean / std: (B, C) channel statistics of each sample (in the data's grey levels), see normalization_affine;
    C, the channel count, is theirs. The pixel type's largest value is the top of gamma's range.
    """
    import torch

    items = list(batch) if not isinstance(batch, torch.Tensor) else list(batch.unbind(0))
    if len(items) == 0:
        raise PipelineConfigError("apply_torch: expected at least one sample, found an empty batch")
    if device is None:
        device = items[0].device if isinstance(items[0], torch.Tensor) else "cpu"
    n = len(items)
    for key in ("window", "angle", "transpose", "hflip", "vflip", "scale", "shift"):
        if len(params[key]) != n:
            raise PipelineConfigError(f"apply_torch: params[{key!r}] has {len(params[key])} rows, batch has {n}")
    s = cfg.crop_size
    channels = np.asarray(mean).shape[-1]
    kind = _pixel_type(items[0])
    top = float(_PIXEL_MAX.get(kind or "uint8", 255))
    out = []
    for i, item in enumerate(items):
        found = _pixel_type(item)
        x = pixel_tensor(item, device)
        if x.ndim != 3 or x.shape[2] != channels or found is None or found != kind:
            raise PipelineConfigError(f"apply_torch: sample {i}: expected {kind or 'uint8'} (h, w, {channels}) "
                                      f"(uint8 or uint16 pixels, as sample 0), found {x.dtype} {tuple(x.shape)}")
        if cfg.rotation == "any":
            x = rotate(x, float(params["angle"][i]), top)
            x = crop(x, (x.shape[0] - s) // 2, (x.shape[1] - s) // 2, s, s)
        if cfg.rrc_scale is not None and tuple(x.shape[:2]) != (s, s):
            x = resize(x, (s, s), top)
        x = flip_transpose(x, bool(params["transpose"][i]), bool(params["hflip"][i]), bool(params["vflip"][i]))
        out.append(x.to(torch.float32) if x.dtype == torch.int32 else x)  # 16-bit: float, resampled or not
    shapes = {tuple(x.shape) for x in out}
    if len(shapes) != 1:
        raise PipelineConfigError(f"apply_torch: samples ended with different shapes {sorted(shapes)}")
    if cfg.photometric:  # float NHWC through blur, gamma, field and noise, then NCHW
        x = photometric(torch.stack(out).to(torch.float32), params, cfg, top).permute(0, 3, 1, 2).contiguous()
    else:  # integer NHWC -> NCHW while still narrow, then one float conversion
        x = torch.stack(out).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    m, sd = normalization_affine(mean, std, params["scale"], params["shift"])
    m_t = _as_tensor(m, device)[:, :, None, None]
    s_t = _as_tensor(sd, device)[:, :, None, None]
    y = x.sub_(m_t).div_(s_t)  # = normalize(intensity(x, a, b), mean, std), folded as in DALI
    return y.to(torch_dtype(cfg.dtype))
