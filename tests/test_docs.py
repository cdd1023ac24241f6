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
        exec(compile(code, "docs/quickstart.md", "exec"), {"__name__": "__main__"})  # as a script runs it
    assert (tmp_path / "qs" / "store.zarr").is_dir()


def test_the_readmes_library_example_shows_the_main_guard():
    # pasted into a script without it, ingest's workers re-ran the script (docs: README, "Why the guard")
    readme = DOCS.parent / "README.md"
    (block,) = [b for b in _python_blocks(readme) if "cellio.ingest(" in b]
    guard, body = block.split('if __name__ == "__main__":', 1)
    assert "cellio.ingest(" not in guard and "cellio.ingest(" in body
    assert "MainModuleError" in readme.read_text()


def test_the_module_paths_the_docs_name_exist():
    """Every `cellio/...` path in the docs, and every package-relative module in the architecture's library half
    (`store/codecs.py`), is a file or folder of the tree: a moved module must take its docs along."""
    root = DOCS.parent
    missing = []
    for doc in sorted(DOCS.glob("*.md")) + [root / "README.md"]:
        for path in re.findall(r"`(cellio/[\w/]+(?:\.py)?)", doc.read_text()):
            if not (root / path).exists():
                missing.append(f"{doc.name}: {path}")
    library = (DOCS / "architecture.md").read_text().split("## The trainer")[0]
    for path in re.findall(r"`((?:store|ingestion|loading|datasets|processes|cli)/[\w/]*\.py)", library):
        if not (root / "cellio" / path).exists():
            missing.append(f"architecture.md: {path}")
    assert missing == []


def test_the_docs_name_trainer_modules_and_files_that_exist():
    # the trainer's files moved into packages (issue 21): a doc naming an old path or module sends a reader nowhere
    import importlib

    root = DOCS.parent
    wrong = []
    for doc in [*sorted(DOCS.glob("*.md")), root / "README.md"]:
        text = doc.read_text()
        for rel in sorted(set(re.findall(r"\btrainer/[\w/]+\.(?:py|yaml)\b", text))):
            if not (root / rel).is_file():
                wrong.append(f"{doc.name}: {rel}")
        for dotted in sorted(set(re.findall(r"(?<![\w/.-])trainer(?:\.\w+)+", text))):
            parts = dotted.split(".")
            n = max(i for i in range(1, len(parts) + 1)
                    if (root.joinpath(*parts[:i]).with_suffix(".py")).is_file()
                    or (root.joinpath(*parts[:i]) / "__init__.py").is_file())
            obj = importlib.import_module(".".join(parts[:n]))
            for attr in parts[n:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                wrong.append(f"{doc.name}: {dotted}")
    assert wrong == []
