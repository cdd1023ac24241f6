"""Phenomic maps: per-well embeddings -> control-based batch correction -> one profile per perturbation -> the
field's benchmarks (EFAAR's relationship recall against CORUM/HuMAP/Reactome/SIGNOR/StringDB and signal
consistency; copairs' replicate and sister mAP).

Stands on its own: it imports nothing else from `trainer` and nothing from `cellio`; its input is a per-well
feature matrix and a per-well metadata table with RxRx3-core's columns (docs/maps.md).

    wells = read_well_embeddings("emb.parquet")                        # metadata columns + f0..fN
    built = build_map(wells, MapSpec(correction="tvn"))                 # correct on EMPTY_control, aggregate
    row = benchmark_row(built, BenchmarkSpec(null_perturbations=null_genes))

    python -m trainer.maps emb.parquet out/maps --null-genes @null_genes.txt

Modules: profiles (the well and map tables), files (parquet/h5ad in and out), aggregate, correct, annotations (the
efaar-benchmarking package's tables), recall, consistency, retrieval (copairs), figures, pipeline, cli.
"""
from trainer.maps.aggregate import METHODS, aggregate, check_guide_names, guides_to_genes
from trainer.maps.annotations import SOURCES, THRESHOLDS, annotation_dir, complexes, relationships
from trainer.maps.consistency import Consistency, signal_consistency
from trainer.maps.correct import (CORRECTIONS, batch_keys, centerscale_on_controls, control_mask, coral_align,
                                  correct, embed_by_pca, pca_centerscale_on_controls, tvn_on_controls)
from trainer.maps.errors import MapInputError, MapsError, MissingControlsError, MissingDependencyError
from trainer.maps.files import read_map, read_well_embeddings, write_map, write_well_embeddings
from trainer.maps.pipeline import (BenchmarkSpec, BuiltMap, MapSpec, benchmark_row, build_map, recall_columns,
                                   select_wells, write_report)
from trainer.maps.profiles import PerturbationMap, WellProfiles
from trainer.maps.recall import cosine_matrix, relationship_recall, table_column
from trainer.maps.retrieval import Retrieval, replicate_map, sister_map

__all__ = [
    "METHODS", "aggregate", "check_guide_names", "guides_to_genes",
    "SOURCES", "THRESHOLDS", "annotation_dir", "complexes", "relationships",
    "Consistency", "signal_consistency",
    "CORRECTIONS", "batch_keys", "centerscale_on_controls", "control_mask", "coral_align", "correct", "embed_by_pca",
    "pca_centerscale_on_controls", "tvn_on_controls",
    "MapInputError", "MapsError", "MissingControlsError", "MissingDependencyError",
    "read_map", "read_well_embeddings", "write_map", "write_well_embeddings",
    "BenchmarkSpec", "BuiltMap", "MapSpec", "benchmark_row", "build_map", "recall_columns", "select_wells",
    "write_report",
    "PerturbationMap", "WellProfiles",
    "cosine_matrix", "relationship_recall", "table_column",
    "Retrieval", "replicate_map", "sister_map",
]
