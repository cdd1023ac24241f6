"""`python -m trainer.maps EMBEDDINGS OUT`: well embeddings -> corrected maps -> benchmark table and pictures.

    python -m trainer.maps emb.parquet out/maps [--metadata metadata_rxrx3_core.csv] \\
        [--corrections none pca_cs tvn] [--aggregation mean|median] [--gene-from wells|guides] \\
        [--control EMPTY_control] [--batch experiment_name] [--coral-batch experiment_name plate | --no-coral] \\
        [--null-genes OR1A1,OR2B6 | --null-genes @null_genes.txt] [--h5ad]

EMBEDDINGS is a parquet with one row per well: metadata columns + features f0..fN (trainer/embed.py's format; or
only well_id + features, with --metadata joining RxRx3-core's metadata_rxrx3_core.csv). OUT gets, per correction,
`map_genes_<correction>.parquet` and `map_guides_<correction>.parquet` (+ .h5ad with --h5ad), then
`benchmark.csv`, `benchmark.json`, `recall_bars.png`, `similarity_heatmap.png` and `run.json` (the options).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from trainer.maps.annotations import SOURCES
from trainer.maps.correct import CORRECTIONS
from trainer.maps.files import read_well_embeddings, write_map
from trainer.maps.pipeline import (BenchmarkSpec, MapSpec, benchmark_row, build_map, select_wells, spec_dict,
                                   summary_line, write_report)

__all__ = ["run", "main"]

log = logging.getLogger(__name__)


def _embed_dims(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', found {value!r}")
    return n


def _null_genes(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    if value.startswith("@"):
        return tuple(line.strip() for line in Path(value[1:]).read_text().splitlines() if line.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())


def run(embeddings: str | Path, out: str | Path, specs: Sequence[MapSpec], bench: BenchmarkSpec, *,
        metadata: str | Path | None = None, perturbation_type: str | None = "CRISPR", prefix: str = "f",
        embeddings_id_col: str | None = None, h5ad: bool = False) -> pd.DataFrame:
    """Build, write and score one map per spec; write the report; return the benchmark table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wells = select_wells(read_well_embeddings(embeddings, metadata, prefix=prefix,
                                              embeddings_id_col=embeddings_id_col), perturbation_type)
    rows, maps = [], {}
    for spec in specs:
        t0 = time.perf_counter()
        built = build_map(wells, spec)
        write_map(built.genes, out / f"map_genes_{spec.correction}.parquet", h5ad=h5ad)
        write_map(built.guides, out / f"map_guides_{spec.correction}.parquet", h5ad=h5ad)
        t1 = time.perf_counter()
        row = benchmark_row(built, bench)
        row.update({"build_s": round(t1 - t0, 2), "benchmark_s": round(time.perf_counter() - t1, 2)})
        rows.append(row)
        maps[spec.correction] = built.genes
        log.info("%s", summary_line(row, bench.sources, *bench.thresholds[0]))
    table = pd.DataFrame(rows)
    write_report(table, maps, out, bench)
    record = {"embeddings": str(embeddings), "metadata": str(metadata) if metadata else None,
              "perturbation_type": perturbation_type, "specs": [spec_dict(s) for s in specs],
              "null_genes": list(bench.null_perturbations), "null_size": bench.null_size, "seed": bench.seed}
    (out / "run.json").write_text(json.dumps(record, indent=1))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.maps", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("embeddings", help="per-well embeddings parquet (metadata columns + f0..fN)")
    p.add_argument("out", help="output directory")
    p.add_argument("--metadata",
                   help="a per-well metadata CSV joined on well_id (RxRx3-core's metadata_rxrx3_core.csv)")
    p.add_argument("--embeddings-id", metavar="COLUMN",
                   help="the embeddings' column holding the metadata's well_id (default well_id; cellio's "
                        "OUT/embeddings.parquet: id_code)")
    p.add_argument("--prefix", default="f", help="feature column prefix (f: f0, f1, ...; OpenPhenom: feature_)")
    p.add_argument("--corrections", nargs="+", default=["none", "pca_cs", "tvn"], choices=CORRECTIONS)
    p.add_argument("--aggregation", default="mean", choices=["mean", "median"])
    p.add_argument("--gene-from", default="wells", choices=["wells", "guides"],
                   help="gene profile = over the gene's wells (EFAAR's notebook) or over its guides' profiles")
    p.add_argument("--control", default="EMPTY_control", help="the negative-control label")
    p.add_argument("--control-col", default="treatment", help="the column holding the control label")
    p.add_argument("--gene-col", default="gene")
    p.add_argument("--guide-col", default="treatment")
    p.add_argument("--perturbation-type", default="CRISPR",
                   help="keep wells of this perturbation_type ('' keeps all)")
    p.add_argument("--batch", nargs="+", default=["experiment_name"],
                   help="metadata columns of a correction batch (a plate: experiment_name plate)")
    p.add_argument("--coral-batch", nargs="+", default=["experiment_name", "plate"], help="TVN's CORAL batches")
    p.add_argument("--no-coral", action="store_true", help="TVN without CORAL")
    p.add_argument("--embed-dims", type=_embed_dims, metavar="N|auto",
                   help="reduce wider features to this many PCA dimensions first (EFAAR's embed_by_pca; e.g. for "
                        "CellProfiler features, which have more dimensions than there are control wells); auto: "
                        "a quarter of the control wells (a trained network's features, docs/maps.md)")
    p.add_argument("--null-genes", help="negative-control genes for signal consistency: comma list or @file")
    p.add_argument("--retrieval-batch", default="experiment_name",
                   help="mAP negatives from the query's own batch (this column; '' for anywhere)")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--null-size", type=int, default=10_000, help="copairs null size for mAP p-values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--h5ad", action="store_true", help="also write each map as AnnData .h5ad (needs anndata)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("copairs").setLevel(logging.WARNING)  # a line per step of every mAP
    specs = [MapSpec(correction=c, aggregation=args.aggregation, gene_from=args.gene_from, control=args.control,
                     control_col=args.control_col, gene_col=args.gene_col, guide_col=args.guide_col,
                     batch=tuple(args.batch), coral_batch=None if args.no_coral else tuple(args.coral_batch),
                     embed_dims=args.embed_dims)
             for c in args.corrections]
    bench = BenchmarkSpec(sources=tuple(args.sources), null_perturbations=_null_genes(args.null_genes),
                          null_size=args.null_size, seed=args.seed, retrieval_batch=args.retrieval_batch or None)
    table = run(args.embeddings, args.out, specs, bench, metadata=args.metadata,
                perturbation_type=args.perturbation_type or None, prefix=args.prefix,
                embeddings_id_col=args.embeddings_id, h5ad=args.h5ad)
    print(table.drop(columns=[c for c in table.columns if c.startswith("pairs_")]).to_string(index=False))
    print(f"-> {args.out}")
    return 0
