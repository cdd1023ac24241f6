"""DALI processing graphs (plain functions) and thin ``@pipeline_def`` entry points.

The graphs take the read windows and the per-sample parameters drawn by ``cellio.transforms.make_params`` (inside
:class:`cellio.sources.SiteSource`) as ``external_source`` inputs, so DALI and the torch reference apply the SAME
parameters. Order: ``.gpu()`` right after the source (GPU mode only), then the expensive interpolating ops on the
smallest window (rotate the margin window then centre-crop; or resize a random-resized-crop window), then the
cheap D4 part on uint8 (a per-sample conditional transpose, a vertical flip), and last one
``crop_mirror_normalize`` doing the horizontal flip, x*a+b, normalization, the cast and HWC -> CHW at once.

The same graphs run in DALI's CPU mode (``device_id=None``): that is the no-GPU path the tests use.
DALI is imported lazily: importing this module without DALI works; building a pipeline raises
MissingDependencyError with the pip command.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .errors import MissingDependencyError, PipelineConfigError
from .transforms import AugmentConfig

__all__ = ["DALI_PACKAGE", "dali_available", "require_dali", "augment_graph", "build_pipeline", "close_pipeline",
           "source_outputs"]

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


def augment_graph(image: Any, angle: Any, transpose: Any, hflip: Any, vflip: Any, mean: Any, std: Any, *,
                  cfg: AugmentConfig, device: str, d4: bool, interpolate: bool) -> Any:
    """uint8 HWC windows -> float CHW (cfg.crop_size square unless the window is already the output).

    d4: include the per-sample transpose / vertical flip (D4 views and flips); interpolate: include the rotation
    (cfg.rotation == "any") or resized-crop step. Both are decided at build time so unused ops cost nothing.
    Needs a pipeline built with enable_conditionals=True (the transpose is a per-sample `if`). angle / transpose /
    vflip may be None when the corresponding step is off.
    """
    from nvidia.dali import fn, types

    if device == "gpu":
        image = image.gpu()
    s = cfg.crop_size
    if interpolate and cfg.rotation == "any":
        image = fn.rotate(image, angle=angle, keep_size=True, interp_type=types.INTERP_LINEAR, fill_value=0)
        image = fn.crop(image, crop=(s, s), crop_pos_x=0.5, crop_pos_y=0.5)  # exact: margin - crop is even
    elif interpolate and cfg.rrc_scale is not None:
        image = fn.resize(image, size=(s, s), interp_type=types.INTERP_LINEAR, antialias=False)
    if d4:
        if transpose:
            image = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)  # keep "HWC" for the merge
        else:
            image = image
        image = fn.flip(image, horizontal=0, vertical=vflip)
    dtype = types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT  # bfloat16: cast by the loader (no DALI type)
    return fn.crop_mirror_normalize(image, mean=mean, std=std, mirror=hflip, output_layout="CHW", dtype=dtype)


def source_outputs(cfg: AugmentConfig, *, train: bool, dihedral: bool = False) -> tuple[str, ...]:
    """The SiteSource columns the graph of this configuration consumes (unused columns would be wasted work)."""
    names = ["image"]
    if train and cfg.rotation == "any":
        names.append("angle")
    if _uses_d4(cfg, train, dihedral):
        names += ["transpose", "vflip"]
    names += ["hflip", "mean", "std", "meta"]
    return tuple(names)


def _uses_d4(cfg: AugmentConfig, train: bool, dihedral: bool) -> bool:
    return (cfg.rotation == "d4" or cfg.vflip > 0) if train else dihedral


def _pipeline_fn(source: Any, cfg: AugmentConfig, device: str, parallel: bool, d4: bool,
                 interpolate: bool) -> tuple[Any, Any]:
    from nvidia.dali import fn

    names = source.outputs
    nodes = fn.external_source(source=source, num_outputs=len(names), batch=True, batch_info=True,
                               parallel=parallel, layout=["HWC" if n == "image" else "" for n in names])
    x = dict(zip(names, nodes))
    out = augment_graph(x["image"], x.get("angle"), x.get("transpose"), x["hflip"], x.get("vflip"), x["mean"],
                        x["std"], cfg=cfg, device=device, d4=d4, interpolate=interpolate)
    return out, x["meta"]


def _train_entry():
    from nvidia.dali import pipeline_def

    @pipeline_def(enable_conditionals=True)
    def train_pipeline(source: Any, cfg: AugmentConfig, device: str, parallel: bool):
        """Random augmentation: rotation/resized crop as configured, D4/flips, jitter, normalization."""
        return _pipeline_fn(source, cfg, device, parallel, d4=_uses_d4(cfg, True, False), interpolate=True)

    return train_pipeline


def _eval_entry():
    from nvidia.dali import pipeline_def

    @pipeline_def(enable_conditionals=True)
    def eval_pipeline(source: Any, cfg: AugmentConfig, device: str, parallel: bool, dihedral: bool):
        """Deterministic TTA views: the window as read (grid cell / centre / full), optional D4 view, normalized."""
        return _pipeline_fn(source, cfg, device, parallel, d4=dihedral, interpolate=False)

    return eval_pipeline


def build_pipeline(source: Any, cfg: AugmentConfig, *, train: bool, device: str = "cpu", batch_size: int,
                   num_workers: int = 1, num_threads: int | None = None, prefetch: int = 2,
                   dihedral: bool = False, seed: int = 0, start_method: str = "fork") -> Any:
    """Build (and start) the train or eval DALI pipeline reading from `source` (a SiteSource).

    device: "cpu" (DALI CPU mode, device_id=None) or "cuda"/"cuda:N"/"gpu". num_workers=0 runs the source in the
    pipeline's thread (no worker processes); >= 1 uses that many parallel external_source worker processes.
    """
    require_dali()
    if batch_size < 1:
        raise PipelineConfigError(f"batch_size: expected an integer >= 1, found {batch_size}")
    if num_workers < 0:
        raise PipelineConfigError(f"num_workers: expected an integer >= 0, found {num_workers}")
    dev = str(device)
    if dev == "cpu":
        device_id, graph_device = None, "cpu"
    elif dev in ("gpu", "cuda") or dev.startswith("cuda:"):
        device_id, graph_device = (int(dev.split(":")[1]) if ":" in dev else 0), "gpu"
    else:
        raise PipelineConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', found {device!r}")
    parallel = num_workers > 0
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_threads=num_threads or max(1, os.cpu_count() or 1),
                                  device_id=device_id, seed=seed, prefetch_queue_depth=max(1, prefetch),
                                  exec_dynamic=True)
    if parallel:
        kwargs.update(py_num_workers=num_workers, py_start_method=start_method)
    if train:
        pipe = _train_entry()(source, cfg, graph_device, parallel, **kwargs)
    else:
        pipe = _eval_entry()(source, cfg, graph_device, parallel, dihedral, **kwargs)
    pipe.build()
    log.debug("built DALI %s pipeline on %s (workers=%d)", "train" if train else "eval", dev, num_workers)
    return pipe


def close_pipeline(pipe: Any) -> None:
    """Stop a pipeline's executor and its external_source worker processes now, not at garbage collection."""
    pool = getattr(pipe, "_py_pool", None)
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    if pool is not None:
        pool.close()
