"""`cellio inspect STORE`: what a store holds (counts, codec, checksums, size on disk, completeness, last
verification, failed sites). Reads every small array, so a damaged table is reported, never shown as data."""
from __future__ import annotations

import argparse
import os
from typing import Any

HELP = "summarize a cellio store: counts per split / cell type / experiment, codec, size, completeness"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--experiments", action="store_true", help="also list the count of every experiment")


def _size_on_disk(fs: Any, root: str) -> tuple[int, int]:
    """(bytes of image chunks, bytes of everything) under the store root."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols:  # os.scandir: fsspec's find(detail=True) took minutes over RxRx1's 125k chunk files
        return _local_size_on_disk(root)
    images = total = 0
    for path, info in fs.find(root, detail=True).items():
        size = int(info.get("size") or 0)
        total += size
        if path.startswith(f"{root}/images/c"):
            images += size
    return images, total


def _local_size_on_disk(root: str) -> tuple[int, int]:
    images = total = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                    continue
                size = e.stat(follow_symlinks=False).st_size
                total += size
                if e.path.startswith(f"{root}/images/c"):
                    images += size
    return images, total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _verified(record: dict[str, Any] | None) -> str:
    if not record:
        return "never (run `cellio verify STORE`)"
    outcome = "OK" if record.get("ok") else (f"DAMAGED: {record.get('damaged_sites')} sites, "
                                             f"{record.get('damaged_arrays')} arrays (see `cellio verify`)")
    return f"{record.get('at')}: {outcome}, {record.get('sites_checked')} sites checked in {record.get('seconds')} s"


def run(args: argparse.Namespace) -> int:
    from ..store.files import get_fs
    from ..errors import StoreDamagedError
    from ..store import open_store

    store = open_store(args.store, allow_incomplete=True)
    a = store.attrs
    H, W, C = store.image_shape
    print(f"store       {store.path}")
    print(f"format      {a['format']} {a['format_version']}, layout {store.axes}, sites {H}x{W}x{C} {store.dtype}")
    lay = store.layout
    print(f"dataset     {lay.name} v{lay.version}: {lay.n_channels} channels ({', '.join(lay.channel_names)}), "
          f"{lay.sites_per_well} sites per well, {len(lay.cell_types)} cell types"
          + ("" if "dataset_layout" in a else " (no dataset_layout attribute: a store written before format 1.3)"))
    print(f"codec       {a['codec']}")
    chunks = a.get("image_chunks") or {"layout": "chunked"}
    print("images      " + (f"sharded: {chunks['sites_per_shard']} sites per shard, {chunks['tile'][0]}x"
                            f"{chunks['tile'][1]} tiles" if chunks["layout"] == "sharded" else
                            "chunked: one chunk per site"))
    print("checksums   " + ("crc32c on every chunk (verified on read)" if store.checksums else
                           "no checksums (format 1.0 store; re-ingest to add them)"))
    print(f"source      {a.get('source', {}).get('raw_dir')}")
    print(f"created     {a.get('created_at')}")
    print(f"verified    {_verified(a.get('last_verified'))}")
    try:  # every table: a missing or damaged one must not pass for data
        sites = store.sites
        if len(store):
            store.channel_stats("site")
    except StoreDamagedError as exc:
        print(f"ingest      DAMAGED: {exc}")
        return 1
    state = "complete" if store.complete else "INCOMPLETE (rerun `cellio ingest` with the same arguments)"
    print(f"ingest      {state}: {len(store)} of {a['n_sites']} sites stored, {len(store.failed)} failed")
    fs, root = get_fs(store.path)
    img_bytes, total = _size_on_disk(fs, root)
    raw_bytes = len(store) * H * W * C * store.dtype.itemsize
    ratio = img_bytes / raw_bytes if raw_bytes else float("nan")
    print(f"size        {_human(total)} on disk ({_human(img_bytes)} of image chunks = {ratio:.3f}x of "
          f"{_human(raw_bytes)} raw {store.dtype})")
    if len(sites):
        print("\nsites per split and cell type")
        table = sites.groupby(["dataset", "cell_type"]).size().unstack(fill_value=0)
        print(table.to_string())
        print("\nsites per well type")
        print(sites.groupby(["dataset", "well_type"]).size().unstack(fill_value=0).to_string())
        n_exp = sites.groupby("dataset")["experiment"].nunique()
        print("\nexperiments " + ", ".join(f"{k}: {v}" for k, v in n_exp.items()))
        if args.experiments:
            print(sites.groupby(["dataset", "experiment"]).size().to_string())
    failed = store.failed
    if len(failed):
        print(f"\nfailed sites ({len(failed)})")
        for f in failed.itertuples():
            print(f"  {f.id_code} site {f.site}: {f.reason}")
    return 0 if store.complete else 1
