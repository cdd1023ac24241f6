"""Whether worker processes can start from this program's main module; checked before cellio starts any.

Python's `spawn` and `forkserver` start methods (cellio's ingest and synth pools) begin every worker by running the
parent's main module again, as `__mp_main__` (`multiprocessing.spawn.prepare`: `_fixup_main_from_path` for a
script, `_fixup_main_from_name` for `python -m module`). A script whose top level calls `cellio.ingest` without an
`if __name__ == "__main__":` guard therefore calls it again in every worker, which fails inside the worker (the
store is locked by the parent) and reaches the user as a child's traceback and `BrokenProcessPool`; a program read
from standard input (`python -`, `__file__ == "<stdin>"`) cannot be run again at all (`FileNotFoundError:
'<stdin>'` in every worker). `require_importable_main` finds both in the parent, before any work, by doing what
a worker would: which main module it would re-run, and whether the line of it now running (the call that starts
the workers) sits outside a `__name__ == "__main__"` test. Python's own rules for what a worker leaves alone are
mirrored: `python -c` and interactive sessions (no file), packages' `__main__.py` (`python -m pkg`), and the
`ipython` launcher.
"""
from __future__ import annotations

import ast
import linecache
import logging
import os
import sys
from types import FrameType, ModuleType

from ..errors import MainModuleError

__all__ = ["require_importable_main"]

log = logging.getLogger(__name__)

_GUARD = 'if __name__ == "__main__":'


def require_importable_main(what: str, method: str) -> None:
    """MainModuleError, saying what to write, when worker processes started now by `method` ("spawn" or
    "forkserver") would run `what` again (an unguarded main module) or cannot start (a main read from stdin)."""
    main = sys.modules.get("__main__")
    if main is None:
        return
    path = _main_path(main)
    if path is None:
        return
    if not os.path.isfile(path):  # "<stdin>": a worker would look for that file and fail
        raise MainModuleError(
            f"{what} starts worker processes ({method}), and each one first runs this program's main module "
            f"again; but it was read from {getattr(main, '__file__', path)!r} (standard input, `python -`), not a "
            f"file, and cannot be run again, so every worker would fail. Save the code as a file with the work "
            f"under\n\n    {_GUARD}\n        ...\n\nand run that file, or pass workers=1 (the work then runs in "
            f"this process)")
    frame = _main_frame(main)
    if frame is None:  # not called while the main module's top level runs (a thread, atexit): nothing re-runs it
        return
    line = frame.f_lineno
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):  # unreadable now: let Python's own machinery speak
        log.debug("%s: cannot read the main module to check its __main__ guard", path)
        return
    if _guarded(tree, line):
        return
    code = linecache.getline(path, line).strip()
    raise MainModuleError(
        f"{what} starts worker processes ({method}), and each one first runs this program's main module again "
        f"(Python's multiprocessing imports it as __mp_main__). File {path}, line {line} (`{code}`) runs at import "
        f"time, outside an `{_GUARD}` block, so every worker would call {what} again. Put the code that starts the "
        f"work under that guard:\n\n    {_GUARD}\n        ...\n\nor pass workers=1 (the work then runs in this "
        f"process)")


def _main_path(main: ModuleType) -> str | None:
    """The file a spawned worker would run as __mp_main__, as `multiprocessing.spawn.get_preparation_data` names it;
    None when it runs none."""
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:  # python -m NAME: run again by name, except packages' __main__ (spawn._fixup_main_from_name)
        if name == "__main__" or name.endswith(".__main__"):
            return None
        path = getattr(main, "__file__", None)
        return os.path.abspath(path) if path else None
    path = getattr(main, "__file__", None)
    if path is None:  # python -c, an interactive session, a notebook
        return None
    from multiprocessing import process

    if not os.path.isabs(path) and process.ORIGINAL_DIR is not None:
        path = os.path.join(process.ORIGINAL_DIR, path)
    path = os.path.normpath(path)
    if os.path.splitext(os.path.basename(path))[0] == "ipython":  # spawn._fixup_main_from_path leaves it alone
        return None
    return path


def _main_frame(main: ModuleType) -> FrameType | None:
    """The frame running the main module's top level, if this call is made from inside it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is main.__dict__:
            return frame
        frame = frame.f_back
    return None


def _guarded(tree: ast.Module, line: int) -> bool:
    """Whether `line` lies in the body of an `if __name__ == "__main__":` (either operand order, or one term of an
    `and`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _tests_main(node.test):
            if any(stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno) for stmt in node.body):
                return True
    return False


def _tests_main(test: ast.expr) -> bool:
    for node in ast.walk(test):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands) and \
                    any(isinstance(o, ast.Constant) and o.value == "__main__" for o in operands):
                return True
    return False
