"""Relationship recall, EFAAR's map benchmark (`efaar_benchmarking.benchmarking.known_relationship_benchmark`).

Cosine similarity between every two perturbations of the map; the null distribution is the similarity of every
distinct pair of the map (the upper triangle: that is what version 1.0 and the RxRx3-core notebook use; the
package's N_NULL_SAMPLES = 5000 constant is not used by this benchmark any more). For each annotation source, the
known pairs whose two genes are both in the map are the query; recall at a threshold pair (lo, hi) is the fraction
of query pairs whose similarity falls at or below the lo-quantile or at or above the hi-quantile of the null —
computed by the package's own `compute_recall`. Thresholds (0.05, 0.95) and (0.1, 0.9).

This reassembles known_relationship_benchmark around a cached relationships table and a dictionary look-up
instead of one `.loc` per pair (it re-reads and re-filters each table on every call, seconds per source);
tests/test_maps.py checks that both give the same numbers. Unlike it, a source with no pair in the map gets a row
(recall NaN, query size 0) instead of disappearing, and duplicate labels are refused instead of ignored.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.maps.annotations import SOURCES, THRESHOLDS, efaar_benchmarking, relationships
from trainer.maps.errors import MapInputError
from trainer.maps.profiles import PerturbationMap

__all__ = ["MIN_ENTITIES", "cosine_matrix", "relationship_recall", "recall_column", "table_column"]

log = logging.getLogger(__name__)

MIN_ENTITIES = 20  # efaar_benchmarking.constants.MIN_REQ_ENT_CNT


def recall_column(lo: float, hi: float) -> str:
    """The package's metric name for a threshold pair: recall_0.05_0.95."""
    return f"recall_{min(lo, hi)}_{max(lo, hi)}"


def table_column(source: str, lo: float, hi: float) -> str:
    """A benchmark table's column for one source and threshold pair: recall_CORUM_0.05_0.95."""
    return f"recall_{source}_{min(lo, hi)}_{max(lo, hi)}"


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of every two rows (sklearn's cosine_similarity, as EFAAR: a zero row has similarity 0)."""
    from sklearn.metrics.pairwise import cosine_similarity

    return cosine_similarity(x, x)


def relationship_recall(pmap: PerturbationMap, sources: Sequence[str] = SOURCES,
                        thresholds: Sequence[tuple[float, float]] = THRESHOLDS,
                        tables: Mapping[str, pd.DataFrame] | None = None,
                        annotation_dir: str | Path | None = None, batch_col: str | None = None) -> pd.DataFrame:
    """One row per source: `source, null_distribution_size, query_distribution_size, recall_<lo>_<hi>...`.

    The map's labels (its key column, e.g. gene symbols) are matched against the sources' entities. `tables` gives
    relationship tables directly (`entity1, entity2`, e.g. a toy); otherwise they are read from the installed
    package (or `annotation_dir`). With `batch_col` (a column of the map's metadata: each perturbation's
    experiment) the known pairs are also split into those within one batch and those across two, against the same
    null (`within_size`, `within_recall_<lo>_<hi>`, `across_...`): a map whose recall lives within batches
    reads batch, not biology."""
    labels = pmap.labels
    if len(set(labels)) != len(labels):
        raise MapInputError("relationship recall: the map's labels are not unique (aggregate to one row per gene)")
    if len(labels) < 2:
        raise MapInputError(f"relationship recall: the map has {len(labels)} perturbation(s); need at least 2")
    if len(labels) < MIN_ENTITIES:
        log.warning("relationship recall: %d perturbations, fewer than EFAAR's minimum of %d: recall is noisy",
                    len(labels), MIN_ENTITIES)
    compute_recall = efaar_benchmarking().compute_recall
    cos = cosine_matrix(pmap.features)
    null = cos[np.triu_indices(len(labels), k=1)]
    position = {label: i for i, label in enumerate(labels)}
    rows = []
    for source in sources:
        rels = tables[source] if tables is not None else relationships(source, annotation_dir)
        inside = rels["entity1"].isin(position) & rels["entity2"].isin(position)
        i = rels.loc[inside, "entity1"].map(position).to_numpy(dtype=int)
        j = rels.loc[inside, "entity2"].map(position).to_numpy(dtype=int)
        query = cos[i, j]
        if len(query) == 0:
            log.warning("relationship recall: %s has no pair among the map's %d perturbations", source, len(labels))
            row = {"null_distribution_size": len(null), "query_distribution_size": 0,
                   **{recall_column(lo, hi): float("nan") for lo, hi in thresholds}}
        else:
            row = compute_recall(null, query, [tuple(t) for t in thresholds])
        if batch_col is not None:
            batch = pmap.metadata[batch_col].astype(str).to_numpy()
            same = batch[i] == batch[j]
            for name, part in (("within", same), ("across", ~same)):
                row[f"{name}_size"] = int(part.sum())
                split = (compute_recall(null, query[part], [tuple(t) for t in thresholds]) if part.any() else {})
                row.update({f"{name}_{recall_column(lo, hi)}": float(split.get(recall_column(lo, hi), np.nan))
                            for lo, hi in thresholds})
        rows.append({"source": source, **row})
    return pd.DataFrame(rows)
