"""Helpers for the reliability tests: damage a store the ways disks and people do, compare stores byte by byte,
and turn a store into the format 1.0 a previous cellio wrote (no crc32c codec, no 4-byte trailers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def flip_byte(path: str | Path, offset: int | None = None) -> None:
    """Flip the low bit of one byte (default: the middle of the file) — bit rot."""
    p = Path(path)
    data = bytearray(p.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(path: str | Path, keep: float = 0.5) -> None:
    p = Path(path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def copy_store(src: str | Path, dst: str | Path) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def store_files(path: str | Path, mask: tuple[str, ...] = ("created_at", "last_verified")) -> dict[str, bytes]:
    """Every file of a store by relative path; the root's run-dependent attributes masked."""
    root = Path(path)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    node = json.loads(files["zarr.json"])
    for key in mask:
        node["attributes"].pop(key, None)
    files["zarr.json"] = json.dumps(node, sort_keys=True).encode()
    return files


def assert_same_store(a: str | Path, b: str | Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb), sorted(set(fa) ^ set(fb))[:5]
    different = [k for k in fa if fa[k] != fb[k]]
    assert not different, f"files differ: {different[:5]}"


def downgrade_to_1_0(path: str | Path) -> Path:
    """Rewrite a format 1.1 store in place as format 1.0: drop the crc32c codec from every array and the 4-byte
    checksum from every chunk, and set format_version "1.0" (what cellio wrote before checksums)."""
    root = Path(path)
    for meta_path in root.rglob("zarr.json"):
        node = json.loads(meta_path.read_text())
        if node.get("node_type") != "array":
            continue
        codecs = node["codecs"]
        assert codecs[-1]["name"] == "crc32c", meta_path
        node["codecs"] = codecs[:-1]
        meta_path.write_text(json.dumps(node, indent=2))
        chunks = meta_path.parent / "c"
        for chunk in (chunks.rglob("*") if chunks.is_dir() else []):
            if chunk.is_file():
                chunk.write_bytes(chunk.read_bytes()[:-4])
    node = json.loads((root / "zarr.json").read_text())
    node["attributes"]["format_version"] = "1.0"
    (root / "zarr.json").write_text(json.dumps(node, indent=2))
    return root
