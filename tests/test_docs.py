"""Docs that are executed: every ```python block of the quickstart runs as written."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_quickstart_python_runs(tmp_path, monkeypatch):
    blocks = _python_blocks(DOCS / "quickstart.md")
    assert blocks, "the quickstart lost its Python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/quickstart.md", "exec"), {"__name__": "__quickstart__"})
    assert (tmp_path / "qs" / "store.zarr").is_dir()
