"""DALI processing graphs (plain functions) and thin ``@pipeline_def`` entry points.

The graphs take the read windows and the per-sample parameters drawn by ``transforms.make_params`` (inside
:class:`cellio.loading.sources.SiteSource`) as ``external_source`` inputs, so DALI and the torch reference apply
the SAME parameters. Order: ``.gpu()`` right after the source (GPU mode only); one ``warp_affine`` per sample with
the composed destination -> source matrix (``transforms.warp_matrices``: rotation of the margin window and its
centre crop, or the random resized crop, then the D4 view and flips) computing only the S x S output pixels
(nearest-neighbour, exact, when there is no rotation/resize); last one ``crop_mirror_normalize`` doing x*a+b,
normalization, the cast and HWC -> CHW at once.

The same graphs run in DALI's CPU mode (``device_id=None``): that is the no-GPU path the tests use.
DALI is imported lazily: importing this module without DALI works; building a pipeline raises
MissingDependencyError with the pip command.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ..params import parse_choice, parse_device, parse_int
from ..errors import MissingDependencyError
from .transforms import AugmentConfig

__all__ = ["DALI_PACKAGE", "dali_available", "require_dali", "augment_graph", "photometric_graph",
           "photometric_columns", "build_pipeline", "close_pipeline", "source_outputs", "warp_mode"]

log = logging.getLogger(__name__)

DALI_PACKAGE = "nvidia-dali-cuda130"


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def require_dali(purpose: str = "The DALI backend") -> None:
    if not dali_available():
        raise MissingDependencyError(DALI_PACKAGE, "dali", purpose)


def warp_mode(cfg: AugmentConfig, *, train: bool, dihedral: bool = False) -> str | None:
    """How the graph resamples: "linear" (arbitrary rotation / resized crop, composed with the flips), "nn" (D4
    views and flips only: an exact pixel permutation), or None (the read window is already the output)."""
    if train:
        if cfg.rotation == "any" or cfg.rrc_scale is not None:
            return "linear"
        return "nn" if (cfg.rotation == "d4" or cfg.hflip > 0 or cfg.vflip > 0) else None
    return "nn" if dihedral else None


def photometric_columns(cfg: AugmentConfig) -> tuple[str, ...]:
    """The per-sample SiteSource columns the photometric ops of `cfg` take (cellio.loading.sources.SiteSource)."""
    cols: list[str] = []
    if cfg.blur_sigma is not None:
        cols += ["blur_sigma", "blur_window"]
    if cfg.gamma is not None:
        cols += ["gamma"]
    if cfg.illumination is not None:
        cols += ["field_y", "field_x", "field_gx", "field_gy", "field_v"]
    if cfg.noise is not None:
        cols += ["noise", "noise_shot", "noise_read"]
    return tuple(cols)


def source_outputs(cfg: AugmentConfig, *, train: bool, dihedral: bool = False) -> tuple[str, ...]:
    """The SiteSource columns the graph of this configuration consumes (unused columns would be wasted work)."""
    warp = warp_mode(cfg, train=train, dihedral=dihedral)
    photo = photometric_columns(cfg) if train else ()
    return ("image", *(("matrix",) if warp else ()), *photo, "mean", "std", "meta")


def photometric_graph(image: Any, x: dict[str, Any], *, cfg: AugmentConfig, device: str, top: float = 255.0) -> Any:
    """float HWC grey levels -> blurred, gamma-corrected, unevenly lit, noisy float HWC, in the order and with the
    parameters of the torch reference (cellio.loading.transforms.photometric). `x`: the photometric_columns nodes;
    top: the pixel type's largest value (gamma's range)."""
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    def dev(node: Any) -> Any:  # arithmetic takes its tensor operands on the image's device
        return node.gpu() if device == "gpu" else node

    y = fn.cast(image, dtype=types.FLOAT)
    if cfg.blur_sigma is not None:  # sigma and window are CPU argument inputs in either mode
        y = fn.gaussian_blur(y, sigma=x["blur_sigma"], window_size=x["blur_window"])
    if cfg.gamma is not None:
        y = top * dmath.pow(y / top, dev(x["gamma"]))
    if cfg.illumination is not None:
        yy, xx = dev(x["field_y"]), dev(x["field_x"])
        y = y * dmath.exp(dev(x["field_gx"]) * xx + dev(x["field_gy"]) * yy + dev(x["field_v"]) * (xx * xx + yy * yy))
    if cfg.noise is not None:
        read = dev(x["noise_read"])
        y = y + dev(x["noise"]) * dmath.sqrt(dmath.max(dev(x["noise_shot"]) * y + read * read, 0.0))
    return y


def augment_graph(image: Any, matrix: Any, mean: Any, std: Any, *, cfg: AugmentConfig, device: str,
                  warp: str | None, out_hw: tuple[int, int], photo: dict[str, Any] | None = None,
                  top: float = 255.0) -> Any:
    """uint8 or uint16 HWC windows of any channel count (fed by external_source: DALI's image decoders stop at 4
    channels) -> float CHW of out_hw. top: the pixel type's largest value.

    One ``warp_affine`` with each sample's composed destination -> source matrix does all the geometry (rotation
    of the margin window + centre crop, or the resized crop, then the D4 view and flips); with nearest-neighbour
    sampling and the integer D4 matrices it is an exact pixel permutation. Then one ``crop_mirror_normalize``
    does x*a+b, normalization, the cast and HWC -> CHW. (Measured on 2 CPU cores at 224: a per-sample conditional
    ``fn.transpose`` + ``fn.flip`` ran at ~0.55-0.8x the speed of one NN ``warp_affine``, see docs/pipelines.md.)
    """
    from nvidia.dali import fn, types

    if device == "gpu":
        image = image.gpu()  # everything after the source runs on the GPU
    if top > 255:  # DALI's warp_affine takes no uint16: 16-bit pixels are resampled in float, never rounded
        image = fn.cast(image, dtype=types.FLOAT)
    if warp is not None:
        kw: dict[str, Any] = {}
        if cfg.rotation == "any":
            kw["fill_value"] = 0.0  # as the reference's zero padding (never reached: the margin covers the crop)
        image = fn.warp_affine(image, matrix=matrix, size=[float(out_hw[0]), float(out_hw[1])],
                               interp_type=types.INTERP_NN if warp == "nn" else types.INTERP_LINEAR, **kw)
    if photo:
        image = photometric_graph(image, photo, cfg=cfg, device=device, top=top)
    dtype = types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT  # bfloat16: cast by the loader (no DALI type)
    return fn.crop_mirror_normalize(image, mean=mean, std=std, output_layout="CHW", dtype=dtype)


def _pipeline_fn(source: Any, cfg: AugmentConfig, device: str, parallel: int, warp: str | None,
                 out_hw: tuple[int, int]) -> tuple[Any, Any]:
    from nvidia.dali import fn

    names = source.outputs
    # `parallel` is the number of batches the worker pool computes ahead (0: the source runs inline). A parallel
    # batch-mode source prefetches ONE batch unless told otherwise, which leaves all but one worker idle.
    ahead = {"prefetch_queue_depth": parallel} if parallel else {}
    spatial = ("image", "field_y", "field_x", "noise")  # HWC-shaped columns (the fields broadcast over C)
    nodes = fn.external_source(source=source, num_outputs=len(names), batch=True, batch_info=True,
                               parallel=bool(parallel), layout=["HWC" if n in spatial else "" for n in names],
                               **ahead)
    x = dict(zip(names, nodes))
    photo = {n: x[n] for n in photometric_columns(cfg) if n in x}
    out = augment_graph(x["image"], x.get("matrix"), x["mean"], x["std"], cfg=cfg, device=device, warp=warp,
                        out_hw=out_hw, photo=photo, top=float(source.max_value))
    return out, x["meta"]


def _train_entry():
    from nvidia.dali import pipeline_def

    @pipeline_def
    def train_pipeline(source: Any, cfg: AugmentConfig, device: str, parallel: int, out_hw: tuple[int, int]):
        """Random augmentation: rotation/resized crop as configured, D4/flips, jitter, normalization."""
        return _pipeline_fn(source, cfg, device, parallel, warp_mode(cfg, train=True), out_hw)

    return train_pipeline


def _eval_entry():
    from nvidia.dali import pipeline_def

    @pipeline_def
    def eval_pipeline(source: Any, cfg: AugmentConfig, device: str, parallel: int, dihedral: bool,
                      out_hw: tuple[int, int]):
        """Deterministic TTA views: the window as read (grid cell / centre / full), optional D4 view, normalized."""
        return _pipeline_fn(source, cfg, device, parallel, warp_mode(cfg, train=False, dihedral=dihedral), out_hw)

    return eval_pipeline


def build_pipeline(source: Any, cfg: AugmentConfig, *, train: bool, device: str = "cpu", batch_size: int,
                   num_workers: int = 1, num_threads: int | None = None, prefetch: int = 2,
                   dihedral: bool = False, seed: int = 0, start_method: str | None = None) -> Any:
    """Build (and start) the train or eval DALI pipeline reading from `source` (a SiteSource).

    device: "cpu" (DALI CPU mode, device_id=None) or "cuda"/"cuda:N"/"gpu". num_workers=0 runs the source in the
    pipeline's thread (no worker processes); >= 1 uses that many parallel external_source worker processes, started
    with `start_method`: default "fork" (cheap), or "spawn" on GPU or once CUDA is initialised in this process
    (DALI refuses to fork then; SiteSource and Store pickle by value/path for spawn).
    """
    require_dali()
    parse_int("batch_size", batch_size, minimum=1)
    parse_int("num_workers", num_workers)
    dev = parse_device("cuda" if str(device) == "gpu" else device)
    if dev == "cpu":
        device_id, graph_device = None, "cpu"
    else:
        device_id, graph_device = (int(dev.split(":")[1]) if ":" in dev else 0), "gpu"
    parallel = max(num_workers, prefetch) if num_workers > 0 else 0  # batches computed ahead by the workers
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_threads=num_threads or max(1, os.cpu_count() or 1),
                                  device_id=device_id, seed=seed, prefetch_queue_depth=max(1, prefetch),
                                  exec_dynamic=True)  # reference-counted outputs: the loader hands them out zero-copy
    if parallel:
        start_method = parse_choice("start_method", start_method, ("fork", "spawn"), optional=True) or \
            ("spawn" if graph_device == "gpu" or _cuda_initialized() else "fork")
        kwargs.update(py_num_workers=num_workers, py_start_method=start_method)
    out_hw = source.out_hw
    if train:
        pipe = _train_entry()(source, cfg, graph_device, parallel, out_hw, **kwargs)
    else:
        pipe = _eval_entry()(source, cfg, graph_device, parallel, dihedral, out_hw, **kwargs)
    pipe.build()
    log.debug("built DALI %s pipeline on %s (workers=%d)", "train" if train else "eval", dev, num_workers)
    return pipe


def _cuda_initialized() -> bool:
    try:
        from nvidia.dali import backend

        return bool(backend.IsDriverInitialized())
    except (ImportError, AttributeError):
        return False


def close_pipeline(pipe: Any) -> None:
    """Stop a pipeline's executor and its external_source worker processes now, not at garbage collection."""
    pool = getattr(pipe, "_py_pool", None)
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    if pool is not None:
        pool.close()
