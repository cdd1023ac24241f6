"""OME-NGFF metadata validation with ome-zarr-models (the `omezarr` extra), usable with cellio's pinned pydantic.

ome-zarr-models 1.6's models are generic pydantic-zarr group specs that pydantic >= 2.13 leaves "not fully
defined" (ome-zarr-models-py issue 417: "Image is not fully defined"; 1.7 fixes it by pinning pydantic < 2.13,
which constraints.txt rules out). Rebuilding every model once with pydantic-zarr's names in scope makes them
usable; what they validate is unchanged. tests/test_format_generators.py does the same for its own checks.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from typing import Any

from ...errors import MetadataError, MissingDependencyError

__all__ = ["hcs_model", "validate_plate"]

# NGFF version -> (ome-zarr-models subpackage, pydantic-zarr module of its Zarr format)
_SUBPACKAGES = {"0.4": ("v04", "pydantic_zarr.v2"), "0.5": ("v05", "pydantic_zarr.v3")}


@functools.cache
def hcs_model(version: str) -> Any:
    """ome-zarr-models' HCS (plate) class for NGFF `version` ("0.4" or "0.5"), rebuilt for pydantic >= 2.13."""
    if version not in _SUBPACKAGES:
        raise MetadataError(f"OME-NGFF version {version!r}: expected one of {sorted(_SUBPACKAGES)}")
    try:
        import pydantic
        sub, pz_name = _SUBPACKAGES[version]
        pkg = importlib.import_module(f"ome_zarr_models.{sub}")
        pz = importlib.import_module(pz_name)
    except ImportError as exc:
        raise MissingDependencyError(f"reading or writing OME-Zarr plates needs ome-zarr-models: pip install "
                                     f"'cellio[omezarr]' ({exc})") from exc
    names = {k: getattr(pz, k) for k in dir(pz) if not k.startswith("_")}
    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    for _ in range(3):  # the models refer to each other: a few passes settle them all
        for mod in mods:
            for obj in vars(mod).values():
                if inspect.isclass(obj) and issubclass(obj, pydantic.BaseModel) and obj.__module__ == mod.__name__:
                    try:
                        obj.model_rebuild(force=True, _types_namespace={**names, **vars(mod)})
                    except pydantic.PydanticUserError:
                        pass  # a model whose references are not rebuilt yet: settles on a later pass
    return importlib.import_module(f"{pkg.__name__}.hcs").HCS


def validate_plate(group: Any, version: str, where: str) -> Any:
    """The ome-zarr-models HCS model of the zarr plate `group` (NGFF `version`); MetadataError naming `where` and
    the validator's findings when it does not validate. Note: a well the plate lists but whose group is missing is
    NOT an error for ome-zarr-models (it skips it); `read_plate` checks that itself."""
    import pydantic

    model = hcs_model(version)
    try:
        return model.from_zarr(group)
    except (pydantic.ValidationError, ValueError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 1200:
            detail = detail[:1200] + " ..."
        raise MetadataError(f"{where}: the OME-NGFF {version} plate metadata does not validate (ome-zarr-models "
                            f"{model.__module__}.HCS): {detail}") from exc
