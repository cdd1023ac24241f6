"""Where an RxRx3-core copy lives: a local directory or an fsspec URL of the repository root (`s3://bucket/rxrx3-core`,
`gs://...`, `hf://datasets/recursionpharma/rxrx3-core`, `memory://...`), opened through fsspec so one code path
reads both. Credentials come from the environment, as fsspec's file systems take them."""
from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["normalize_source", "open_source"]

# pathlib folds "s3://bucket/x" into "s3:/bucket/x" (Path("s3://b") == Path("s3:/b")); a caller that handed a URL
# through a Path gets it back with both slashes.
_FOLDED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def normalize_source(raw: str | os.PathLike[str]) -> str:
    """`raw` as text: an fsspec URL ("s3://bucket/prefix", without a trailing slash) or an absolute local path."""
    text = os.fspath(raw)
    if _FOLDED_URL.match(text):
        text = _FOLDED_URL.sub(r"\1://", text, count=1)
    if "://" in text:
        return text.rstrip("/")
    return os.path.abspath(text)


def open_source(raw: str | os.PathLike[str]) -> tuple[Any, str, str]:
    """(file system, root path inside it, normalized source) of `raw`."""
    from fsspec.core import url_to_fs

    source = normalize_source(raw)
    fs, root = url_to_fs(source)
    return fs, root.rstrip("/"), source
