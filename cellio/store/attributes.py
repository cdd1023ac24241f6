"""The root attributes of a store (docs/data_format.md, "Root attributes"): whether a group is a cellio store this
cellio reads (`check_format`), and the data set layout it holds (`store_layout`): the `dataset_layout` attribute
(format >= 1.3), or, for a store written before it, RxRx1's layout with the store's site shape, since cellio
wrote only RxRx1 stores then."""
from __future__ import annotations

from typing import Any

from ..datasets import DatasetLayout, get_layout
from ..errors import LayoutError, StoreError
from .format import FORMAT_NAME, FORMAT_VERSION

__all__ = ["LAYOUT_ATTRIBUTE", "LEGACY_DATASET", "check_format", "layout_attribute", "recorded_dataset",
           "recorded_dtype", "store_layout"]

LAYOUT_ATTRIBUTE = "dataset_layout"
LEGACY_DATASET = "rxrx1"  # the data set of every store written before format 1.3 (no dataset_layout attribute)


def check_format(group: dict[str, Any], path: str) -> dict[str, Any]:
    """The root attributes of a store's root zarr.json `group`; StoreError unless it is a cellio store of a format
    version this cellio reads (the same MAJOR; any MINOR, which only adds attributes and arrays)."""
    attrs = group.get("attributes", {}) if isinstance(group, dict) else {}
    if not isinstance(group, dict) or group.get("node_type") != "group" or attrs.get("format") != FORMAT_NAME:
        node = group.get("node_type") if isinstance(group, dict) else type(group).__name__
        raise StoreError(f"{path}: not a cellio store: expected a Zarr v3 group with attribute format="
                         f"{FORMAT_NAME!r}, found node_type={node!r} format={attrs.get('format')!r}")
    major = str(attrs.get("format_version", "")).split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise StoreError(f"{path}: format_version {attrs.get('format_version')!r} is not readable by this cellio "
                         f"(reads {FORMAT_VERSION.split('.')[0]}.x); upgrade cellio or re-ingest")
    return attrs


def layout_attribute(layout: DatasetLayout) -> dict[str, Any]:
    """The `dataset_layout` attribute of a store of `layout` (its dict form)."""
    return layout.to_dict()


def recorded_dataset(attrs: dict[str, Any]) -> str:
    """The name of the data set a store holds, from its root attributes (without parsing the whole layout)."""
    recorded = attrs.get(LAYOUT_ATTRIBUTE)
    return str(recorded.get("name")) if isinstance(recorded, dict) else LEGACY_DATASET


def recorded_dtype(attrs: dict[str, Any]) -> str:
    """The pixel type a store's attributes record (the layout's `pixel_dtype`; uint8 before format 1.3)."""
    recorded = attrs.get(LAYOUT_ATTRIBUTE)
    return str(recorded.get("pixel_dtype", "uint8")) if isinstance(recorded, dict) else "uint8"


def store_layout(attrs: dict[str, Any], image_shape: tuple[int, int, int], dtype: str, path: str) -> DatasetLayout:
    """The layout a store's attributes record, checked against its images (H, W, C) of `dtype`; StoreError naming
    the attribute when it does not parse or disagrees with them."""
    recorded = attrs.get(LAYOUT_ATTRIBUTE)
    if recorded is None:
        layout = get_layout(LEGACY_DATASET)
        layout = layout.replace(site_shape=tuple(image_shape[:2]))
    else:
        try:
            layout = DatasetLayout.from_dict(recorded)
        except LayoutError as exc:
            raise StoreError(f"{path}: the {LAYOUT_ATTRIBUTE} attribute is not a layout this cellio reads: "
                             f"{exc}") from None
    found = (*layout.site_shape, layout.n_channels)
    if tuple(image_shape) != found or layout.pixel_dtype != dtype:
        raise StoreError(f"{path}: the {LAYOUT_ATTRIBUTE} attribute describes {layout.pixel_dtype} sites of {found} "
                         f"(H, W, channels) but the images array holds {dtype} {tuple(image_shape)}; the store is "
                         f"inconsistent")
    return layout
