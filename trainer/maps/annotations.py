"""The known gene-gene relationships a map is scored against: the annotation tables that Recursion's
`efaar-benchmarking` package installs (`efaar_benchmarking/benchmark_annotations/{CORUM,HuMAP,Reactome,SIGNOR,
StringDB}.txt`, `entity1,entity2` pairs, and `CORUM_clusters.tsv`, complex name -> genes). Nothing is copied into
this repository: the files are read where pip put them, through the package's own readers
(`get_benchmark_relationships`, which sorts each pair and drops self-pairs and duplicates, and
`get_benchmark_clusters`).

The package declares heavy dependencies (scvi-tools, wget, ...) that the parts used here do not import; install it
without them: `make maps-deps` (pip install --no-deps efaar-benchmarking==1.0 plus geomloss, which its
benchmarking module imports).
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import pandas as pd

from trainer.maps.errors import MapInputError, MissingDependencyError

__all__ = ["SOURCES", "THRESHOLDS", "efaar_benchmarking", "annotation_dir", "relationships", "complexes"]

INSTALL = "make maps-deps  (pip install --no-deps efaar-benchmarking==1.0 geomloss==0.3.1)"
# EFAAR's constants (efaar_benchmarking.constants BENCHMARK_SOURCES and RECALL_PERC_THRS), repeated here so that a
# table header can be built without importing the package; tests/test_maps.py checks they still agree
SOURCES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
THRESHOLDS = ((0.05, 0.95), (0.1, 0.9))


def efaar_benchmarking() -> ModuleType:
    """`efaar_benchmarking.benchmarking`, or a MissingDependencyError with the install command."""
    try:
        import efaar_benchmarking.benchmarking as bench
    except ImportError as e:
        raise MissingDependencyError(f"the maps benchmarks need efaar-benchmarking ({e}); install: {INSTALL}") from e
    return bench


def annotation_dir() -> Path:
    """Where the installed package keeps its annotation tables (efaar_benchmarking.constants.BENCHMARK_DATA_DIR)."""
    efaar_benchmarking()
    from efaar_benchmarking.constants import BENCHMARK_DATA_DIR

    return Path(BENCHMARK_DATA_DIR)


@functools.lru_cache(maxsize=None)
def _relationships(directory: str, source: str) -> pd.DataFrame:
    path = Path(directory) / f"{source}.txt"
    if not path.is_file():
        raise MapInputError(f"annotation source {source!r}: no file {path}")
    return efaar_benchmarking().get_benchmark_relationships(directory, source).reset_index(drop=True)


def relationships(source: str, directory: str | Path | None = None) -> pd.DataFrame:
    """A source's relationships as `entity1, entity2` (sorted within each pair, no self-pairs, no duplicates),
    read by the package's `get_benchmark_relationships` (cached per process: the big tables take seconds)."""
    return _relationships(str(directory if directory is not None else annotation_dir()), source).copy()


def complexes(genes: list[str], min_genes: int = 3, directory: str | Path | None = None) -> dict[str, list[str]]:
    """CORUM complexes (CORUM_clusters.tsv) restricted to `genes`, keeping those with at least `min_genes` of
    them, as the package's `get_benchmark_clusters` returns them (complex name -> sorted genes)."""
    d = str(directory if directory is not None else annotation_dir())
    return efaar_benchmarking().get_benchmark_clusters(d, "CORUM", min_genes, list(genes))
