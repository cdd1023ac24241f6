"""Phenomic-map baselines side by side on the synthetic RxRx3-core knockout screen (tests/formats/rxrx3_maps.py).

Each method is a function from the data set directory to (well metadata, per-well features); every method's
features go through the same maps (trainer/maps: no correction, per-plate centre-scale, PCA-CS, TVN) and the same
benchmarks (EFAAR's relationship recall per annotation source at both thresholds and signal consistency, copairs'
replicate and sister mAP). The images are decoded here with pyarrow + imagecodecs (cellio's RxRx3-core reader is
issue 23's).

  intensity    (b) per-channel intensity statistics per well: mean, std, 5/25/50/75/95/99th percentiles (48)
  random_cnn   (c) a randomly initialised DenseNet(growth_rate=12, block_config=(4, 4, 4), num_init_features=32)
               with a 6-channel stem, eval mode, seed 0: global-average-pooled features of the whole image (92)
  random_cnn_penultimate
               (c) the same network's second dense block, averaged over the image (88): what
               `trainer.infer.embed --layer penultimate` pools, on the raw images (cellio's input is normalised
               per plate)
  cp_measure   (a) CellProfiler measurements by cp-measure on segmented cells (nuclei: Otsu + distance-transform
               watershed on w1; cells: watershed from the nuclei on w2+w5+w6), median over each well's objects;
               a documented subset: every feature group except Costes colocalisation and radial Zernikes, texture
               at 16 grey levels (scale 3) instead of 256 — full cp-measure takes ~18 s a well here (Costes 9 s,
               256-level texture 7 s), the subset ~1.1 s
               (1,638 measurements kept), reduced to 60 dimensions (half the control wells) by EFAAR's
               embed_by_pca before each correction
  (d)          cellio's weakly supervised model: the main job's per-well embeddings (`python -m trainer.demo
               --data DIR --out OUT plan.val_fold=-1 ...` writes OUT/embeddings.parquet, docs/maps.md): pass
               `--embeddings cellio=OUT/embeddings.parquet` (embeddings_method); benchmarks/maps_cellio.sh runs
               it with its ablations
  (e)          a self-supervised model: the main job with plan.objective=mae (a channel-agnostic masked-autoencoder
               ViT, trainer/training/mae.py) writes its embeddings the same way; benchmarks/maps_cellio.sh runs it
               as `cellio_mae`. Any model's per-well embeddings plug in the same way, or add a function to METHODS
  true_phenotypes
               not a method: the recall of the screen's true gene effects (synthetic_truth.json) and how many of
               each source's pairs the screen's complexes link; a reference, not a strict ceiling; added to every
               table (recall columns only)

    python benchmarks/maps.py [--data DIR] [--out benchmarks/results/maps] [--methods intensity random_cnn cp_measure]
                              [--corrections none centerscale pca_cs tvn] [--embeddings NAME=PATH ...]
                              [--timing-wells 10000] [--reuse-features]

Without --data (or with a --data that does not exist) the default synthetic set is generated there first. OUT gets
`benchmark.csv/.json` (one row per method x correction), `timings.csv` (seconds per 10k wells of every step on
this CPU), `recall_bars.png`, `similarity_heatmap.png` and `run.json`; each method's per-well features go to
--features-dir (benchmarks/data/maps_features/<the data directory's name>, not tracked).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "formats"))

from trainer.maps import (BenchmarkSpec, MapSpec, WellProfiles, benchmark_row, build_map,  # noqa: E402
                          read_well_embeddings, write_well_embeddings)
from trainer.maps.pipeline import spec_dict, write_report  # noqa: E402
from trainer.maps.recall import table_column  # noqa: E402

log = logging.getLogger("benchmarks.maps")

Method = Callable[[Path], tuple[pd.DataFrame, np.ndarray]]
CHANNELS = ("DNA", "ConA", "Phalloidin", "SYTO14", "Mito", "WGA")  # RxRx3-core w1..w6
_KEY = re.compile(r"^(?P<exp>[^/]+)/Plate(?P<plate>\d+)/(?P<address>[A-Z]{1,2}\d{2})_s1_(?P<ch>[1-6])$")


# ----------------------------------------------------------------------------------------------- reading the set
def read_metadata(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "metadata_rxrx3_core.csv")


def iter_wells(data: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(well_id, uint8 (6, H, W)) for every well, in shard order: the parquet shards read with pyarrow, each
    `jp2.bytes` decoded with imagecodecs. A well's six channel rows are consecutive and may straddle two shards."""
    import imagecodecs
    import pyarrow.parquet as pq

    shards = sorted((data / "data").glob("train-*.parquet"))
    if not shards:
        raise SystemExit(f"{data}/data: no train-*.parquet shards")
    current, planes = None, {}
    for shard in shards:
        table = pq.read_table(shard, columns=["__key__", "jp2"])
        keys = table.column("__key__").to_pylist()
        blobs = table.column("jp2").combine_chunks().field("bytes").to_pylist()
        for key, blob in zip(keys, blobs):
            m = _KEY.match(key)
            if m is None:
                raise SystemExit(f"{shard.name}: key {key!r} is not experiment/PlateN/ADDRESS_s1_C")
            well = f"{m['exp']}_{int(m['plate'])}_{m['address']}"
            if well != current:
                if current is not None:
                    yield current, _stack(current, planes)
                current, planes = well, {}
            planes[int(m["ch"])] = imagecodecs.jpeg2k_decode(blob)
    if current is not None:
        yield current, _stack(current, planes)


def _stack(well: str, planes: dict[int, np.ndarray]) -> np.ndarray:
    if sorted(planes) != [1, 2, 3, 4, 5, 6]:
        raise SystemExit(f"well {well}: channels {sorted(planes)} in the shards, expected 1..6")
    return np.stack([planes[c] for c in range(1, 7)])


def _in_metadata_order(data: Path, features: dict[str, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray]:
    meta = read_metadata(data)
    missing = sorted(set(meta["well_id"]) - set(features))
    if missing:
        raise SystemExit(f"{data}: {len(missing)} wells of the metadata have no images, e.g. {missing[:3]}")
    return meta, np.stack([features[w] for w in meta["well_id"]])


# ----------------------------------------------------------------------------------------------- (b) intensities
def intensity_stats(data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Per channel: mean, std and the 5/25/50/75/95/99th percentiles of the pixel values."""
    out = {}
    for well, img in iter_wells(data):
        x = img.reshape(6, -1).astype(np.float64)
        pct = np.percentile(x, [5, 25, 50, 75, 95, 99], axis=1).T
        out[well] = np.concatenate([x.mean(1, keepdims=True), x.std(1, keepdims=True), pct], axis=1).ravel()
    return _in_metadata_order(data, out)


# ----------------------------------------------------------------------------------------------- (c) random CNN
def random_cnn(data: Path, seed: int = 0, batch: int = 32, layer: str = "final") -> tuple[pd.DataFrame, np.ndarray]:
    """Global-average-pooled features of a randomly initialised small DenseNet with a 6-channel stem (eval mode):
    of its last layer (`layer="final"`, 92), or of the dense block before the last (`"penultimate"`, 88: what
    `trainer.infer.embed --layer penultimate` pools)."""
    import torch
    from torchvision.models import DenseNet

    torch.manual_seed(seed)
    net = DenseNet(growth_rate=12, block_config=(4, 4, 4), num_init_features=32)
    net.features.conv0 = torch.nn.Conv2d(6, 32, kernel_size=7, stride=2, padding=3, bias=False)
    net.eval()
    out: dict[str, np.ndarray] = {}
    ids: list[str] = []
    imgs: list[np.ndarray] = []

    def flush() -> None:
        with torch.no_grad():
            x = torch.from_numpy(np.stack(imgs)).float() / 255.0
            if layer == "final":
                f = torch.nn.functional.adaptive_avg_pool2d(torch.relu(net.features(x)), 1).flatten(1)
            else:
                for name, module in net.features.named_children():
                    x = module(x)
                    if name == "denseblock2":
                        break
                f = x.mean(dim=(2, 3))
        out.update(zip(ids, f.numpy().astype(np.float64)))
        ids.clear()
        imgs.clear()

    for well, img in iter_wells(data):
        ids.append(well)
        imgs.append(img)
        if len(ids) == batch:
            flush()
    if ids:
        flush()
    return _in_metadata_order(data, out)


# ----------------------------------------------------------------------------------------------- (a) cp-measure
CP_GROUPS = dict(intensity=True, texture=True, granularity=True, radial_distribution=True, radial_zernikes=False,
                 sizeshape=True, zernike=True, feret=True, correlation_pearson=True, correlation_costes=False,
                 correlation_manders_fold=True, correlation_rwc=True)
CP_TEXTURE = {"gray_levels": 16, "scale": 3}


def segment(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei (Otsu on the smoothed DNA channel, split by a distance-transform watershed) and cells (watershed
    from the nuclei on the smoothed ConA + Mito + WGA image, inside its Otsu foreground): CellProfiler's
    IdentifyPrimaryObjects / IdentifySecondaryObjects in their simplest form."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    x = img.astype(np.float64)
    dna = ndi.gaussian_filter(x[0], 1.0)
    fg = ndi.binary_opening(dna > threshold_otsu(dna), iterations=1)
    dist = ndi.distance_transform_edt(fg)
    blobs, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=3, labels=blobs, exclude_border=False)
    markers = np.zeros(blobs.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = watershed(-dist, markers, mask=fg)
    cyto = ndi.gaussian_filter(x[1] + x[4] + x[5], 1.5)
    cells = watershed(-cyto, nuclei, mask=(cyto > threshold_otsu(cyto)) | (nuclei > 0))
    return nuclei.astype(np.int32), cells.astype(np.int32)


def cp_measure_features(data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """cp-measure (CP_GROUPS) on nuclei and cells; per well the median over objects of every measurement, plus
    the object counts. Columns that are not finite in every well, or constant, are dropped (pycytominer's
    drop_na_columns / variance filter) and counted in the log."""
    from cp_measure.featurizer import featurize, make_featurizer_config

    config = make_featurizer_config(list(CHANNELS), objects=["nuclei", "cells"], texture_params=CP_TEXTURE,
                                    **CP_GROUPS)
    rows: dict[str, dict[str, float]] = {}
    for well, img in iter_wells(data):
        nuclei, cells = segment(img)
        feats: dict[str, float] = {"count_nuclei": float(nuclei.max()), "count_cells": float(cells.max())}
        if nuclei.max() > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values, columns, objs = featurize(img[None].astype(np.float32) / 255.0,
                                                  np.stack([nuclei, cells])[None], config)
            kind = np.array([o[1] for o in objs])
            for obj in ("nuclei", "cells"):
                sel = values[kind == obj]
                if len(sel):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        med = np.nanmedian(sel, axis=0)
                    feats.update({f"{obj}_{c}": float(v) for c, v in zip(columns, med)})
        rows[well] = feats
    frame = pd.DataFrame.from_dict(rows, orient="index")
    finite = np.isfinite(frame.to_numpy(dtype=np.float64)).all(axis=0)
    varying = frame.std(axis=0).to_numpy() > 0
    keep = finite & varying
    log.info("cp_measure: %d measurements, %d kept (%d not finite in every well, %d constant)", frame.shape[1],
             int(keep.sum()), int((~finite).sum()), int((finite & ~varying).sum()))
    frame = frame.loc[:, keep]
    return _in_metadata_order(data, {w: frame.loc[w].to_numpy(dtype=np.float64) for w in frame.index})


METHODS: dict[str, Method] = {
    "intensity": intensity_stats,      # (b)
    "random_cnn": random_cnn,          # (c)
    "random_cnn_penultimate": functools.partial(random_cnn, layer="penultimate"),  # (c) at the block before the last
    "cp_measure": cp_measure_features,  # (a)
}
# a method's dimension reduction before every correction (EFAAR's embed_by_pca): CellProfiler measurements are
# reduced as in EFAAR's "CP-PCA128-TVN" maps to 128 dimensions, capped at half the control wells (whitening more
# dimensions than that mostly amplifies noise; trainer/maps/correct.py warns): 60 on the default set
EMBED_DIMS: dict[str, int] = {"cp_measure": 128}
# (d) cellio's weakly supervised model and (e) a self-supervised model: any function data set directory ->
# (well metadata, features) can be added to METHODS; a trained model's per-well embeddings parquet (the format of
# trainer/infer/embed.py's write_embeddings, written by the main job) plugs in from the command line as
# --embeddings NAME=PATH, reduced by default like `make maps` reduces it (EMBEDDINGS_DIMS: a quarter of the control
# wells, trainer/maps/correct.py's auto_embed_dims; --embed-dims NAME=N|auto|none changes any method's).
EMBEDDINGS_DIMS = "auto"


def embeddings_method(path: Path) -> Method:
    """A method that reads precomputed per-well embeddings and aligns them with the data set's wells by well id:
    `well_id` (RxRx3-core's metadata column), or `id_code` (the main job's OUT/embeddings.parquet: cellio's site
    table names a well `{experiment}_{plate}_{well}`, RxRx3-core's well_id)."""
    def method(data: Path) -> tuple[pd.DataFrame, np.ndarray]:
        wells = read_well_embeddings(path)
        id_col = next((c for c in ("well_id", "id_code") if c in wells.metadata.columns), None)
        if id_col is None:
            raise SystemExit(f"{path}: no well_id or id_code column to align the embeddings with {data}'s wells")
        pos = pd.Index(wells.metadata[id_col]).get_indexer(read_metadata(data)["well_id"])
        if (pos < 0).any():
            raise SystemExit(f"{path}: {int((pos < 0).sum())} wells of {data} have no embedding")
        return read_metadata(data), wells.features[pos]
    return method


TRUE_PHENOTYPES = "true_phenotypes"


def true_phenotypes_row(data: Path, truth: dict, bench: BenchmarkSpec) -> dict:
    """The recall of the screen's true biology: every gene's true effect (`synthetic_truth.json`'s `gene_effect`;
    the null genes' is zero) as its profile, no batch effect, no noise. Of a source's known pairs, those whose genes
    share a complex of the screen are the ones it links (`linked_pairs_<source>`); the others are recalled only
    through two complexes' directions being alike, or by chance (1 of SIGNOR's 7 pairs on the second screen links
    one complex). Not a strict ceiling: a map sees the effects through the images, which weigh the phenotype's
    axes unequally. Recall only (consistency and mAP need wells)."""
    from trainer.maps import PerturbationMap, recall_columns, relationships

    meta = read_metadata(data)
    meta = meta[(meta["perturbation_type"] == "CRISPR") & (meta["gene"] != "EMPTY_control")]
    genes = meta.groupby("gene", sort=True)["experiment_name"].first()
    width = len(truth["axes"])
    effects = np.array([truth["gene_effect"].get(g, [0.0] * width) for g in genes.index], dtype=np.float64)
    pmap = PerturbationMap(effects, pd.DataFrame({"gene": genes.index, "experiment_name": genes.to_numpy()}),
                           ("gene",))
    complex_of = {g: name for name, members in truth["complexes"].items() for g in members}
    linked = {}
    for source in bench.sources:  # known pairs whose two genes share a complex of the screen
        rels = relationships(source, bench.annotation_dir)
        pairs = rels[rels["entity1"].isin(complex_of) & rels["entity2"].isin(complex_of)]
        linked[f"linked_pairs_{source}"] = int((pairs["entity1"].map(complex_of)
                                               == pairs["entity2"].map(complex_of)).sum())
    return {"method": TRUE_PHENOTYPES, "correction": "none", "n_genes": len(pmap), "n_features": width,
            **recall_columns(pmap, bench), **linked}


# ----------------------------------------------------------------------------------------------- timing at 10k wells
def tile_wells(wells: WellProfiles, reps: int, seed: int = 0) -> WellProfiles:
    """`reps` copies of `wells`' design as extra experiments screening renamed genes (`AKT1-r2`, guides
    `AKT1-r2_guide_1`; the first copy keeps the real names), features resampled with noise — to time the map
    steps at a given size (whole copies, so that every plate keeps its controls)."""
    r = np.random.default_rng(seed)
    metas, feats = [], []
    for k in range(reps):
        m = wells.metadata.copy()
        if k:
            m["experiment_name"] = m["experiment_name"] + f"-r{k}"
            treated = m["gene"] != "EMPTY_control"
            m.loc[treated, "treatment"] = (m.loc[treated, "gene"] + f"-r{k}_guide_"
                                           + m.loc[treated, "treatment"].str.rsplit("_", n=1).str[1])
            m.loc[treated, "gene"] = m.loc[treated, "gene"] + f"-r{k}"
        m["well_id"] = m["experiment_name"] + "_" + m["plate"].astype(str) + "_" + m["address"]
        metas.append(m)
        feats.append(wells.features + r.normal(0, wells.features.std(0) * 0.1 + 1e-9, wells.features.shape))
    return WellProfiles.build(np.concatenate(feats), pd.concat(metas, ignore_index=True))


def time_steps(wells: WellProfiles, spec: MapSpec, bench: BenchmarkSpec, n: int) -> dict[str, float]:
    """Seconds per `n` wells of each map step (correction + aggregation, recall, consistency, the two mAPs),
    measured on the first multiple of the set's size at or above `n` and scaled to `n`."""
    from trainer.maps import relationship_recall, replicate_map, signal_consistency, sister_map

    big = tile_wells(wells, -(-n // len(wells)))
    scale = n / len(big)
    null = sorted({g for g in big.metadata["gene"] if g.split("-r")[0] in set(bench.null_perturbations)})
    t0 = time.perf_counter()
    built = build_map(big, spec)
    t1 = time.perf_counter()
    relationship_recall(built.genes, bench.sources, bench.thresholds)
    t2 = time.perf_counter()
    signal_consistency(built.wells, spec.gene_col, null, drop=(spec.control,))
    t3 = time.perf_counter()
    replicate_map(built.wells, spec.guide_col, spec.control_col, spec.control, same_batch=bench.retrieval_batch,
                  null_size=bench.null_size)
    t4 = time.perf_counter()
    sister_map(built.guides, spec.gene_col, same_batch=bench.retrieval_batch, null_size=bench.null_size)
    t5 = time.perf_counter()
    log.info("timed the map steps on %d wells (%d genes)", len(big), len(built.genes))
    return {"correct_and_aggregate_s": scale * (t1 - t0), "recall_s": scale * (t2 - t1),
            "consistency_s": scale * (t3 - t2), "replicate_mAP_s": scale * (t4 - t3),
            "sister_mAP_s": scale * (t5 - t4)}


# ----------------------------------------------------------------------------------------------- the run
def ensure_data(data: Path) -> Path:
    if (data / "metadata_rxrx3_core.csv").is_file():
        return data
    import rxrx3_maps

    log.info("generating the default synthetic set in %s", data)
    t = time.perf_counter()
    rxrx3_maps.generate(data)
    log.info("generated in %.0f s", time.perf_counter() - t)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "benchmarks" / "data" / "rxrx3_maps"),
                   help="an RxRx3-core-layout set from tests/formats/rxrx3_maps.py (generated when absent)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "maps"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--embeddings", nargs="*", default=[], metavar="NAME=PATH",
                   help="extra methods from per-well embeddings parquets ((d), (e): a trained model's embeddings)")
    p.add_argument("--corrections", nargs="+", default=["none", "centerscale", "pca_cs", "tvn"])
    p.add_argument("--embed-dims", nargs="*", default=[], metavar="METHOD=N|auto|none",
                   help="a method's reduction before each correction (defaults: cp_measure 128 capped at half the "
                        "controls, --embeddings methods auto, the others none)")
    p.add_argument("--batch", nargs="+", default=["experiment_name", "plate"], help="correction batch columns")
    p.add_argument("--coral-batch", nargs="+", default=["experiment_name", "plate"], help="TVN's CORAL batches")
    p.add_argument("--null-size", type=int, default=10_000)
    p.add_argument("--timing-wells", type=int, default=10_000, help="time the map steps at this many wells (0: skip)")
    p.add_argument("--features-dir", default=None,
                   help="where each method's per-well features are written (features_<method>.parquet/.json)")
    p.add_argument("--reuse-features", action="store_true",
                   help="read a method's features from --features-dir when they were made from the same --data "
                        "(with the time they took then); --embeddings methods are always read from their file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("copairs").setLevel(logging.WARNING)
    data, out = ensure_data(Path(args.data)), Path(args.out)
    features_dir = Path(args.features_dir or ROOT / "benchmarks" / "data" / "maps_features" / data.name)
    out.mkdir(parents=True, exist_ok=True)
    features_dir.mkdir(parents=True, exist_ok=True)
    truth = json.loads((data / "synthetic_truth.json").read_text())
    bench = BenchmarkSpec(null_perturbations=tuple(truth["null_genes"]), null_size=args.null_size, seed=args.seed)
    methods: dict[str, Method] = {m: METHODS[m] for m in args.methods}
    extra = set()
    for item in args.embeddings:
        name, _, path = item.partition("=")
        methods[name] = embeddings_method(Path(path))
        extra.add(name)
    dims: dict[str, int | str | None] = {}
    for item in args.embed_dims:
        name, _, value = item.partition("=")
        if name not in methods or not (value in ("auto", "none") or value.isdigit()):
            raise SystemExit(f"--embed-dims {item!r}: expected METHOD=N|auto|none with METHOD one of {list(methods)}")
        dims[name] = None if value == "none" else value if value == "auto" else int(value)
    rows, maps, timings = [], {}, []
    for name, method in methods.items():
        cached, record = features_dir / f"features_{name}.parquet", features_dir / f"features_{name}.json"
        if (args.reuse_features and name not in extra and cached.is_file() and record.is_file()
                and json.loads(record.read_text())["data"] == str(data.resolve())):
            wells, seconds = read_well_embeddings(cached), json.loads(record.read_text())["seconds"]
            log.info("%s: features from %s (computed earlier in %.1f s)", name, cached, seconds)
        else:
            t = time.perf_counter()
            meta, feats = method(data)
            seconds = time.perf_counter() - t
            wells = WellProfiles.build(feats, meta)
            write_well_embeddings(wells, cached)
            record.write_text(json.dumps({"seconds": seconds, "wells": len(wells), "data": str(data.resolve())}))
        log.info("%s: %d wells x %d features in %.1f s (%.1f ms a well)", name, len(wells), wells.n_features,
                 seconds, 1e3 * seconds / len(wells))
        timing = {"method": name, "features_s_per_10k_wells": seconds / len(wells) * 1e4}
        n_controls = int((wells.metadata["treatment"] == "EMPTY_control").sum())
        embed = min(EMBED_DIMS[name], n_controls // 2) if name in EMBED_DIMS else None
        embed = dims.get(name, EMBEDDINGS_DIMS if name in extra else embed)
        for correction in args.corrections:
            spec = MapSpec(correction=correction, batch=tuple(args.batch), coral_batch=tuple(args.coral_batch),
                           embed_dims=embed)
            built = build_map(wells, spec)
            row = {"method": name, **benchmark_row(built, bench), "features_ms_per_well": 1e3 * seconds / len(wells)}
            rows.append(row)
            maps[f"{name} / {correction}"] = built.genes
            lo, hi = bench.thresholds[0]
            log.info("%s / %s: CORUM %.3f HuMAP %.3f replicate mAP %.3f sister mAP %.3f", name, correction,
                     row[table_column("CORUM", lo, hi)], row[table_column("HuMAP", lo, hi)], row["replicate_mAP"],
                     row["sister_mAP"])
            if args.timing_wells and correction == args.corrections[-1]:
                steps = time_steps(wells, spec, bench, args.timing_wells)
                timing.update({f"{k[:-2]}_s_per_{args.timing_wells // 1000}k_wells": v for k, v in steps.items()})
        timings.append(timing)
    rows.append(true_phenotypes_row(data, truth, bench))
    table = pd.DataFrame(rows)
    write_report(table, maps, out, bench, label_cols=("method", "correction"), complexes_shown=truth["complexes"])
    pd.DataFrame(timings).to_csv(out / "timings.csv", index=False, float_format="%.2f")
    (out / "run.json").write_text(json.dumps({
        "data": str(data.resolve().relative_to(ROOT) if data.resolve().is_relative_to(ROOT) else data),
        "synthetic": truth["parameters"], "methods": list(methods), "corrections": args.corrections,
        "spec": spec_dict(MapSpec(batch=tuple(args.batch), coral_batch=tuple(args.coral_batch))),
        "cp_measure": {"groups": CP_GROUPS, "texture": CP_TEXTURE},
        "embed_dims": {**EMBED_DIMS, **{n: EMBEDDINGS_DIMS for n in extra}, **dims},
        "null_size": args.null_size,
        "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor()},
        indent=1))
    show = ["method", "correction"] + [table_column(s, lo, hi) for s in bench.sources for lo, hi in bench.thresholds]
    show += ["consistency_p<0.01", "replicate_mAP", "sister_mAP"]
    print(table[show].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(pd.DataFrame(timings).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
