"""From well profiles to benchmarked maps: correct -> aggregate -> score, and the report files.

    wells = read_well_embeddings("emb.parquet")                       # or WellProfiles.build(x, metadata)
    built = build_map(wells, MapSpec(correction="tvn"))                # corrected wells, guide map, gene map
    row = benchmark_row(built, BenchmarkSpec(null_perturbations=("OR1A1", ...)))   # one line of the table
    write_report(table, {"tvn": built.genes}, out)                     # CSV + JSON + the two pictures

Order of operations, as in EFAAR's RxRx3-core notebook: the correction is fitted and applied on wells (controls
included), then wells are aggregated; the controls are left out of the maps (after a control-based correction
their mean is ~0). The gene map is the mean/median over the gene's wells (`gene_from="wells"`, the notebook's
way) or over its guides' profiles (`gene_from="guides"`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.maps.aggregate import aggregate, check_guide_names, guides_to_genes
from trainer.maps.annotations import SOURCES, THRESHOLDS, complexes
from trainer.maps.consistency import ALPHA, signal_consistency
from trainer.maps.correct import CORRECTIONS, correct
from trainer.maps.errors import MapInputError
from trainer.maps.figures import pick_complexes, recall_bars, similarity_heatmaps
from trainer.maps.profiles import PerturbationMap, WellProfiles
from trainer.maps.recall import relationship_recall, table_column
from trainer.maps.retrieval import NULL_SIZE, THRESHOLD, replicate_map, sister_map

__all__ = ["MapSpec", "BenchmarkSpec", "BuiltMap", "select_wells", "build_map", "benchmark_row", "recall_columns",
           "write_report",
           "spec_dict", "summary_line"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapSpec:
    """How to build a map. `batch`: metadata columns of a correction batch (RxRx3-core's plate numbers repeat
    across experiments, so a plate is ("experiment_name", "plate")); `coral_batch`: TVN's CORAL batches (None:
    no CORAL); `embed_dims`: reduce wider features first with EFAAR's embed_by_pca (global standardisation + PCA
    over all wells; its CellProfiler maps use 128), whatever the correction."""

    correction: str = "pca_cs"
    aggregation: str = "mean"
    gene_from: str = "wells"
    control: str = "EMPTY_control"
    control_col: str = "treatment"
    gene_col: str = "gene"
    guide_col: str = "treatment"
    batch: tuple[str, ...] | None = ("experiment_name",)
    coral_batch: tuple[str, ...] | None = ("experiment_name", "plate")
    n_components: int | None = None
    embed_dims: int | str | None = None   # or "auto": a quarter of the control wells

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise MapInputError(f"correction {self.correction!r}; expected one of {CORRECTIONS}")
        if self.gene_from not in ("wells", "guides"):
            raise MapInputError(f"gene_from {self.gene_from!r}; expected 'wells' or 'guides'")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to score a map. `null_perturbations`: negative-control genes (no phenotype) for signal consistency;
    they are also left out of the retrieval queries (they stay as negatives). `retrieval_batch`: mAP negatives
    come from the query's own batch (None: from anywhere); a guide map keeps the column when each guide's wells
    share it."""

    sources: tuple[str, ...] = SOURCES
    thresholds: tuple[tuple[float, float], ...] = THRESHOLDS
    null_perturbations: tuple[str, ...] = ()
    alpha: float = ALPHA
    null_size: int = NULL_SIZE
    map_threshold: float = THRESHOLD
    seed: int = 0
    retrieval_batch: str | None = "experiment_name"
    annotation_dir: str | None = None


@dataclass(frozen=True)
class BuiltMap:
    spec: MapSpec
    wells: WellProfiles            # corrected, controls included
    guides: PerturbationMap        # one row per guide (controls left out)
    genes: PerturbationMap         # one row per gene (controls left out)
    extra: dict = field(default_factory=dict)


def select_wells(wells: WellProfiles, perturbation_type: str | None = "CRISPR",
                 column: str = "perturbation_type") -> WellProfiles:
    """Keep the wells of one perturbation type (RxRx3-core mixes CRISPR and COMPOUND experiments); says how many
    it leaves out. None, or metadata without the column, keeps every well."""
    if perturbation_type is None or column not in wells.metadata.columns:
        return wells
    keep = (wells.metadata[column] == perturbation_type).to_numpy()
    if not keep.any():
        raise MapInputError(f"no well has {column} == {perturbation_type!r} (values: "
                            f"{sorted(map(str, wells.metadata[column].unique()))})")
    if not keep.all():
        log.info("kept %d of %d wells (%s == %r)", int(keep.sum()), len(wells), column, perturbation_type)
    return wells.subset(keep)


def build_map(wells: WellProfiles, spec: MapSpec) -> BuiltMap:
    """Correct the wells on their controls, then aggregate the non-control wells to guides and genes."""
    wells.require([spec.gene_col, spec.guide_col, spec.control_col], "build map")
    check_guide_names(wells.metadata, spec.gene_col, spec.guide_col, (spec.control,))
    corrected = correct(wells, spec.correction, control=spec.control, control_col=spec.control_col,
                        batch=spec.batch, coral_batch=spec.coral_batch, n_components=spec.n_components,
                        embed_dims=spec.embed_dims)
    treated = corrected.subset((corrected.metadata[spec.control_col] != spec.control).to_numpy())
    if len(treated) == 0:
        raise MapInputError(f"build map: every well is a {spec.control!r} control; nothing to map")
    guides = aggregate(treated, spec.guide_col, spec.aggregation)
    if spec.gene_from == "wells":
        genes = aggregate(treated, spec.gene_col, spec.aggregation)
    else:
        genes = guides_to_genes(guides, spec.gene_col, spec.aggregation)
    return BuiltMap(spec, corrected, guides, genes)


def recall_columns(genes: PerturbationMap, bench: BenchmarkSpec) -> dict:
    """The recall columns of a gene map's table row: known pairs in the map and recall per source and threshold
    pair, split into pairs within one retrieval batch and across two where each gene has one batch (a screen that
    puts a gene in one experiment)."""
    row: dict = {}
    split = bench.retrieval_batch if bench.retrieval_batch in genes.metadata.columns else None
    recall = relationship_recall(genes, bench.sources, bench.thresholds, annotation_dir=bench.annotation_dir,
                                 batch_col=split)
    for rec in recall.to_dict("records"):
        row[f"pairs_{rec['source']}"] = int(rec["query_distribution_size"])
        for lo, hi in bench.thresholds:
            row[table_column(rec["source"], lo, hi)] = float(rec[f"recall_{min(lo, hi)}_{max(lo, hi)}"])
            if split:
                for part in ("within", "across"):
                    row[f"{part}_batch_{table_column(rec['source'], lo, hi)}"] = float(
                        rec[f"{part}_recall_{min(lo, hi)}_{max(lo, hi)}"])
        if split:
            row[f"pairs_{rec['source']}_within_batch"] = int(rec["within_size"])
    return row


def benchmark_row(built: BuiltMap, bench: BenchmarkSpec) -> dict:
    """One line of the benchmark table: sizes, recall per source and threshold pair (+ the number of known pairs
    in the map), signal consistency, replicate and sister mAP."""
    spec = built.spec
    row: dict = {"correction": spec.correction, "aggregation": spec.aggregation, "gene_from": spec.gene_from,
                 "n_wells": len(built.wells), "n_guides": len(built.guides), "n_genes": len(built.genes),
                 "n_features": built.genes.features.shape[1]}
    row.update(recall_columns(built.genes, bench))
    null = tuple(bench.null_perturbations)
    if null:
        cons = signal_consistency(built.wells, spec.gene_col, null, drop=(spec.control,), alpha=bench.alpha)
        row.update({"n_null_genes": cons.n_null, f"consistency_p<{bench.alpha:g}": cons.fraction_consistent,
                    "consistency_untestable": cons.n_untestable})
    else:
        log.warning("signal consistency not computed: no null perturbations given")
        row.update({"n_null_genes": 0, f"consistency_p<{bench.alpha:g}": float("nan"), "consistency_untestable": 0})
    meta = built.wells.metadata
    null_guides = sorted(set(meta.loc[meta[spec.gene_col].isin(null), spec.guide_col].astype(str)))
    rep = replicate_map(built.wells, spec.guide_col, spec.control_col, spec.control, exclude=null_guides,
                        same_batch=bench.retrieval_batch, null_size=bench.null_size, threshold=bench.map_threshold,
                        seed=bench.seed)
    sis = sister_map(built.guides, spec.gene_col, exclude=null, same_batch=bench.retrieval_batch,
                     null_size=bench.null_size, threshold=bench.map_threshold, seed=bench.seed)
    row.update({"replicate_mAP": rep.mean_map, "replicate_retrieved": rep.fraction_retrieved,
                "sister_mAP": sis.mean_map, "sister_retrieved": sis.fraction_retrieved})
    return row


def write_report(table: pd.DataFrame, maps: Mapping[str, PerturbationMap], out: str | Path,
                 bench: BenchmarkSpec, label_cols: Sequence[str] = ("correction",), n_complexes: int = 6,
                 stem: str = "benchmark", complexes_shown: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """`{stem}.csv`, `{stem}.json`, `recall_bars.png` and `similarity_heatmap.png` (`maps`: panel name -> gene
    map; the heatmap shows `complexes_shown`, by default CORUM's largest complexes among the first map's genes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv, js = out / f"{stem}.csv", out / f"{stem}.json"
    table.to_csv(csv, index=False, float_format="%.4f")
    table.to_json(js, orient="records", indent=1, double_precision=4)
    paths = [csv, js]
    paths.append(recall_bars(table, out / "recall_bars.png", bench.sources, bench.thresholds, label_cols))
    first = next(iter(maps.values()))
    members = complexes_shown if complexes_shown is not None else complexes(list(first.labels), 3,
                                                                            bench.annotation_dir)
    picked = pick_complexes(members, n=n_complexes)
    if picked:
        paths.append(similarity_heatmaps(maps, picked, out / "similarity_heatmap.png"))
    else:
        log.warning("no CORUM complex has 3 genes in the map: no heatmap")
    return paths


def spec_dict(spec: MapSpec) -> dict:
    """A spec as plain data (for the run record)."""
    d = asdict(spec)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def summary_line(row: Mapping, sources: Sequence[str], lo: float, hi: float) -> str:
    recalls = " ".join(f"{s}={row.get(table_column(s, lo, hi), np.nan):.3f}" for s in sources)
    return (f"{row['correction']:>11}: recall@{lo:g}/{hi:g} {recalls} | replicate mAP {row['replicate_mAP']:.3f} "
            f"| sister mAP {row['sister_mAP']:.3f}")
