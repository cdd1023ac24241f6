"""Packaging contracts: a light `import cellio`, a curated public API, no library -> trainer imports, a CLI."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cellio

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    # torch, DALI and the trainer must not load just because someone imported cellio.
    code = ("import sys, cellio, cellio.schema, cellio.errors; "
            "heavy = [m for m in ('torch', 'torchvision', 'nvidia.dali', 'trainer', 'kaggle') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_public_api_resolves():
    for name in cellio.__all__:
        assert getattr(cellio, name) is not None, name


def test_library_never_imports_trainer_or_torchvision():
    offenders = []
    for path in (ROOT / "cellio").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("trainer", "torchvision")]
    assert offenders == []


def test_trainer_uses_only_public_cellio():
    private = []
    for path in (ROOT / "trainer").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cellio"):
                mod = node.module
                allowed = mod in ("cellio", "cellio.schema", "cellio.errors", "cellio.testing")
                if not allowed or any(a.name.startswith("_") for a in node.names):
                    private.append(f"{path.relative_to(ROOT)}: from {mod} import ...")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("cellio.") and a.name not in ("cellio.schema", "cellio.errors",
                                                                        "cellio.testing"):
                        private.append(f"{path.relative_to(ROOT)}: import {a.name}")
    assert private == []


def test_cli_help_shows_each_default_once():
    out = subprocess.run([sys.executable, "-m", "cellio", "ingest", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    text = " ".join(out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    assert "(default: all cores) (default:" not in text and "(default: lz4)" in text
    for option in text.split(" --"):
        assert option.count("(default:") <= 1, option


def test_cli_help_for_every_command():
    from cellio.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS), "every command module must exist"
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "cellio", name, "--help"], capture_output=True, text=True,
                             cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "usage: cellio" in out.stdout
