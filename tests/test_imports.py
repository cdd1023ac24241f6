"""Import hygiene of the packages, read with `ast` (nothing is imported): no module imports another module's
private name (`from .x import _y`), no package reaches into another package's private module, no import cycle;
and the layering (docs/architecture.md): cellio never imports the trainer, a private module of cellio is used only
by the modules of its own package, nothing in cellio outside the RxRx1 package (`cellio/datasets/rxrx1/`) imports
RxRx1's specifics (its modules, or the backward-compatible `cellio.schema`, which is itself the one exception); the
trainer uses only cellio's public API, training (trainer/training) never imports inference (trainer/infer) nor the
job (trainer/job), inference never imports the job.

Every import counts, also one inside a function (a lazy import still ties the two modules together); only
`if TYPE_CHECKING:` imports are left out, since they never run.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["cellio", "trainer"]


@dataclass(frozen=True)
class Import:
    where: str         # "cellio/loader.py:23"
    importer: str      # module doing the import, "cellio.loading.loader"
    module: str        # module named by the statement, "cellio.loading.sampling"
    names: tuple[str, ...]  # the names taken from it (empty for `import x`)


def _all_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of cellio/ and trainer/ (a package is its __init__)."""
    out = {}
    for top in ("cellio", "trainer"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _all_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imports(name: str) -> list[Import]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if isinstance(node, ast.Import):
            out += [Import(where, name, a.name, ()) for a in node.names]
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module == "__future__":
            continue
        out.append(Import(where, name, module, tuple(a.name for a in node.names)))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _in(package: str) -> list[str]:
    return [m for m in MODULES if _top(m) == package]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_is_imported_across_modules(package):
    offenders = []
    for name in _in(package):
        for imp in _imports(name):
            for taken in imp.names:
                if not _is_private(taken):
                    continue
                # `from . import _x` names a module of the same package, which is allowed
                if f"{imp.module}.{taken}" in MODULES and _top(imp.module) == package:
                    continue
                offenders.append(f"{imp.where}: from {imp.module} import {taken}")
            # another package's private module (trainer -> cellio._x)
            parts = imp.module.split(".")
            if _top(imp.module) != package and any(_is_private(p) for p in parts):
                offenders.append(f"{imp.where}: imports {imp.module}")
    assert offenders == []


def _edges(package: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in _in(package)}
    for name in graph:
        for imp in _imports(name):
            targets = [imp.module] + [f"{imp.module}.{n}" for n in imp.names]
            graph[name] |= {t for t in targets if t in graph and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    assert _cycles(_edges(package)) == []


def _targets(imp: Import) -> list[str]:
    """The modules an import statement names: the module, and `module.name` where that is a module."""
    return [imp.module] + [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in MODULES]


def _package_of(module: str) -> str:
    path = MODULES.get(module)
    return module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]


def test_the_library_never_imports_the_trainer():
    offenders = [f"{imp.where}: {t}" for name in _in("cellio") for imp in _imports(name) for t in _targets(imp)
                 if _top(t) == "trainer"]
    assert offenders == []


def _private_module_offenders(imports: list[Import]) -> list[str]:
    """Imports of a private module (`pkg._x`, or anything below it) from outside its own package `pkg`: a private
    module serves the modules beside it, never another package (not even a subpackage or the parent)."""
    offenders = []
    for imp in imports:
        for target in _targets(imp):
            parts = target.split(".")
            for k, part in enumerate(parts):
                if _is_private(part) and k > 0:
                    owner = ".".join(parts[:k])
                    if _package_of(imp.importer) != owner:
                        offenders.append(f"{imp.where}: {imp.importer} imports {target}, private to {owner}")
                    break
    return offenders


def test_a_private_module_serves_only_its_own_package():
    assert _private_module_offenders([i for name in _in("cellio") for i in _imports(name)]) == []


RXRX1_PACKAGE = "cellio.datasets.rxrx1"
SCHEMA_SHIM = "cellio.schema"  # the backward-compatible constants; it alone outside the package imports them


def _rxrx1_leaks(imports: list[Import]) -> list[str]:
    """Imports of RxRx1's specifics (its package's modules, or the schema shim) by a cellio module outside that
    package: everything else reads a store's layout, or names the data set through the registry."""
    leaks = []
    for imp in imports:
        inside = imp.importer == RXRX1_PACKAGE or imp.importer.startswith(RXRX1_PACKAGE + ".")
        if inside or imp.importer == SCHEMA_SHIM:
            continue
        for target in _targets(imp):
            if target in (RXRX1_PACKAGE, SCHEMA_SHIM) or target.startswith(RXRX1_PACKAGE + "."):
                leaks.append(f"{imp.where}: {imp.importer} imports {target}")
    return leaks


def test_nothing_outside_the_rxrx1_package_imports_rxrx1_specifics():
    assert _rxrx1_leaks([i for name in _in("cellio") for i in _imports(name)]) == []


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _reaches(importers: str, targets: str) -> list[str]:
    """Imports of a module of package `importers` into package `targets`."""
    return [f"{imp.where}: {imp.module} {list(imp.names)}" for name in MODULES if _within(name, importers)
            for imp in _imports(name) if any(_within(t, targets) for t in _targets(imp))]


# The entry modules: `python -m trainer.demo` (the main job) and `python -m trainer.train` (one training run, the
# place where training meets inference: it hands the pseudo-label stage its labeller). Nothing imports them.
ENTRIES = ("trainer.demo", "trainer.train")


@pytest.mark.parametrize("targets", ["trainer.infer", "trainer.job"])
def test_training_never_imports_inference_or_the_job(targets):
    assert _reaches("trainer.training", targets) == []


def test_inference_never_imports_the_job():
    assert _reaches("trainer.infer", "trainer.job") == []


def test_nothing_imports_the_entry_modules():
    offenders = [f"{imp.where}: {imp.module}" for name in MODULES for imp in _imports(name)
                 if any(t in ENTRIES for t in _targets(imp))]
    assert offenders == []
    assert all(e in MODULES for e in ENTRIES)


# cellio's public API as the trainer may use it: the names of cellio/__init__.py's __all__ (as `cellio.NAME` or
# `from cellio import NAME`), and these public modules (tests/test_package.py holds the trainer to the same list).
CELLIO_PUBLIC_MODULES = ("cellio.errors", "cellio.schema", "cellio.testing")


def _cellio_all() -> set[str]:
    tree = ast.parse((ROOT / "cellio" / "__init__.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):  # `_LAZY: dict[str, str] = {name: module}`, the names __all__ is made of
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_LAZY":
            names |= {k.value for k in node.value.keys}
    errors = ast.parse((ROOT / "cellio" / "errors.py").read_text())
    for node in ast.walk(errors):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names |= {e.value for e in node.value.elts}
    return names | {"__version__"}


def test_the_trainer_uses_only_cellios_public_api():
    public = _cellio_all()
    offenders = []
    for name in _in("trainer"):
        for imp in _imports(name):
            if _top(imp.module) != "cellio":
                continue
            if imp.module == "cellio":
                offenders += [f"{imp.where}: from cellio import {n}" for n in imp.names if n not in public]
            elif imp.module not in CELLIO_PUBLIC_MODULES and not (
                    imp.names and all(f"{imp.module}.{n}" in CELLIO_PUBLIC_MODULES for n in imp.names)):
                offenders.append(f"{imp.where}: imports {imp.module} {list(imp.names)}")
        # `import cellio` then `cellio.NAME`: every attribute read must be a public name
        path = MODULES[name]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cellio" \
                    and node.attr not in public:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: cellio.{node.attr}")
    assert offenders == []
    assert {"open_store", "create_loader", "derive_plate_groups", "ConfigError"} <= public


def test_the_trainer_reads_a_data_sets_shape_from_its_layout_not_rxrx1s_constants():
    """The trainer never imports cellio.schema (RxRx1's constants): channels, cell types, splits and labels come
    from the store's layout (trainer/training/layout.py)."""
    offenders = [f"{imp.where}: {imp.module} {list(imp.names)}" for name in _in("trainer") for imp in _imports(name)
                 if imp.module == "cellio.schema" or (imp.module == "cellio" and "schema" in imp.names)]
    assert offenders == []


def test_the_checks_see_what_they_look_for():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    loader = _imports("cellio.loading.loader")
    assert any(i.module == "cellio.loading.sampling" and "ShardedSampler" in i.names for i in loader)
    assert any(i.module == "cellio.loading.pipeline" for i in loader)  # lazy, inside a function
    assert any(i.module == "cellio.params" for i in loader)
    assert "cellio.datasets.rxrx1.kaggle.fetch" in _edges("cellio")["cellio.datasets.rxrx1.kaggle"]
    assert _is_private("_decode_strings") and not _is_private("__all__")
    fake = [Import("cellio/loading/loader.py:1", "cellio.loading.loader", "cellio.datasets.rxrx1.layout", ("RXRX1",)),
            Import("cellio/store/reader.py:1", "cellio.store.reader", "cellio.schema", ("N_CHANNELS",)),
            Import("cellio/datasets/__init__.py:1", "cellio.datasets", "cellio.datasets", ("rxrx1",)),
            Import("cellio/datasets/rxrx1/metadata.py:1", "cellio.datasets.rxrx1.metadata",
                   "cellio.datasets.rxrx1.layout", ("RXRX1",)),
            Import("cellio/schema.py:1", "cellio.schema", "cellio.datasets.rxrx1.layout", ("CELL_TYPES",))]
    assert [leak.split(":")[0] for leak in _rxrx1_leaks(fake)] == ["cellio/loading/loader.py",
                                                                   "cellio/store/reader.py",
                                                                   "cellio/datasets/__init__.py"]
    private = [Import("cellio/cli/ingest.py:1", "cellio.cli.ingest", "cellio.store._shards", ("ShardLayout",)),
               Import("cellio/store/reader.py:1", "cellio.store.reader", "cellio.store._shards", ("ShardLayout",)),
               Import("cellio/store/paths/base.py:1", "cellio.store.paths.base", "cellio.store._shards", ()),
               Import("trainer/data.py:1", "trainer.data", "cellio._format", ())]
    assert [o.split(":")[0] for o in _private_module_offenders(private)] == ["cellio/cli/ingest.py",
                                                                            "cellio/store/paths/base.py",
                                                                            "trainer/data.py"]
    # the layering checks see the imports they forbid (where they are allowed) and tell the packages apart
    assert _reaches("trainer.train", "trainer.infer") != [] and _reaches("trainer.job", "trainer.infer") != []
    assert _reaches("trainer.infer", "trainer.training") != []
    loop = _imports("trainer.training.loop")
    assert any(_within(t, "trainer.training.stages") for imp in loop for t in _targets(imp))
    assert not _within("trainer.training", "trainer.train") and _within("trainer.train", "trainer.train")
