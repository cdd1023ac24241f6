"""A synthetic CRISPR knockout screen in RxRx3-core's layout whose ground truth is real biology (docs/maps.md).

Genes are members of real CORUM complexes (CORUM_clusters.tsv, read from the installed `efaar-benchmarking`
package, never copied here); each complex has a shared phenotype direction, so the real annotation tables, scored
by the real benchmark code (trainer/maps), are the ground truth. Own image and phenotype code: it uses neither
cellio's synthetic data nor tests/formats/cells.py; only `write_rxrx3_core` from rxrx3_core.py writes the files
(Hugging Face parquet shards + JPEG 2000, the exact format, docs/dataset_formats.md).

Biology
  * phenotype space: P = 14 axes (the log intensity of each of the 6 channels, nucleus size, cell size, nucleus
    elongation, mitochondrial puncta, nucleoli, actin fibres, ER perinuclear concentration, cell density);
  * a complex has a random unit direction u_c and strength a_c; a gene's effect is
    m_g * strength * (a_c u_c + gene_noise * xi_g) (per-gene noise xi_g, per-gene strength m_g);
  * partial penetrance: a cell is knocked out with probability penetrance_g * efficiency_k (guide efficiency; a few
    guides are duds), and a knocked-out cell shows the effect at a random expressivity (0.6..1.4);
  * cell-to-cell variation: every cell adds N(0, cell_noise^2) on every axis;
  * null genes: olfactory-receptor genes (not expressed in HUVEC; absent from all five annotation sources, which
    the generator checks) with no phenotype: the negative-control perturbations of EFAAR's consistency benchmark;
  * EMPTY_control wells on every plate.
Batch effects, strong enough that an uncorrected map fails
  * genes are split over experiments (gene-001, gene-002, ...; a complex's members spread over them, as RxRx3-core
    screens different genes in different experiments), each experiment on several plates holding every one of its
    guides once plus the controls;
  * per experiment and per plate: a shift in phenotype space (cells differ between batches), per-channel gains
    (lognormal), additive background, and a plate illumination falloff.

    python tests/formats/rxrx3_maps.py OUT [--size 128] [--complexes 16] [--genes-per-complex 4] [--null-genes 16]
        [--guides 3] [--experiments 3] [--plates 2] [--controls 20] [--strength 1.0] [--batch-strength 1.0]
        [--rows-per-shard 500] [--seed 0] [--linked-in SIGNOR ...]

OUT gets RxRx3-core's files (metadata_rxrx3_core.csv, data/train-*.parquet) and `synthetic_truth.json` (complexes,
null genes, per-gene and per-guide parameters). Output is a pure function of the arguments.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rxrx3_core import METADATA_COLUMNS, N_CHANNELS, address_1536, write_rxrx3_core  # noqa: E402

AXES = ("int_w1", "int_w2", "int_w3", "int_w4", "int_w5", "int_w6", "nucleus_size", "cell_size",
        "nucleus_elongation", "mito_puncta", "nucleoli", "actin_fibres", "er_perinuclear", "density")
P = len(AXES)
CONTROL = "EMPTY_control"
SOURCES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
# olfactory-receptor genes, the classic unexpressed controls of CRISPR screens; the ones found in an annotation
# source are skipped at generation time
OLFACTORY = ("OR1A1", "OR1A2", "OR1B1", "OR1C1", "OR1D2", "OR1E1", "OR1F1", "OR1G1", "OR1J1", "OR1K1", "OR1M1",
             "OR1N1", "OR1S1", "OR2A4", "OR2B6", "OR2C1", "OR2F1", "OR2H1", "OR2J2", "OR2M4", "OR2T1", "OR2W1",
             "OR3A1", "OR4C3", "OR4D1", "OR4K1", "OR5A1", "OR5B2", "OR5D13", "OR5K1", "OR6B1", "OR6N1", "OR7A5",
             "OR7C1", "OR8A1", "OR8D1", "OR9A2", "OR10G3", "OR11A1", "OR12D3", "OR13C2", "OR14A16")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9-]*$")
# seeded-generator purposes
_PICK, _EFFECT, _GENE, _GUIDE, _BATCH, _LAYOUT, _CELLS = 201, 202, 203, 204, 205, 206, 207


def rng(seed: int, purpose: int, *ids: object) -> np.random.Generator:
    """A generator that is a pure function of the seed, a purpose and ids (strings by crc32)."""
    keys = [int(i) if isinstance(i, (int, np.integer)) else zlib.crc32(str(i).encode()) for i in ids]
    return np.random.default_rng([int(seed), purpose, *keys])


def parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); 'WxH' -> (H, W)."""
    if "x" in text:
        w, h = (int(v) for v in text.lower().split("x"))
        return h, w
    return int(text), int(text)


def annotation_dir() -> Path:
    try:
        from efaar_benchmarking.constants import BENCHMARK_DATA_DIR
    except ImportError as e:
        raise SystemExit(f"rxrx3_maps needs efaar-benchmarking's annotation tables ({e}); run `make maps-deps`")
    return Path(BENCHMARK_DATA_DIR)


# ----------------------------------------------------------------------------------------------- the design
@dataclass(frozen=True)
class Design:
    complexes: dict[str, list[str]]          # CORUM complex -> its genes in the screen
    null_genes: list[str]                    # no phenotype
    experiment_of: dict[str, str]            # gene -> experiment
    gene_effect: dict[str, list[float]]      # gene -> effect vector (P)
    penetrance: dict[str, float]
    guide_efficiency: dict[str, float]       # guide -> efficiency
    experiment_shift: dict[str, list[float]]
    plate_shift: dict[str, list[float]]      # "experiment/plate" -> shift
    gain: dict[str, list[float]]             # "experiment/plate" -> per-channel gain
    background: dict[str, list[float]]       # "experiment/plate" -> per-channel offset (grey levels)
    falloff: dict[str, float]                # "experiment/plate" -> illumination falloff at the corners


def known_pairs(directory: Path, source: str) -> set[frozenset[str]]:
    """The unordered gene pairs an annotation source (CORUM.txt, SIGNOR.txt, ...) lists."""
    frame = pd.read_csv(directory / f"{source}.txt")
    return {frozenset(p) for p in zip(frame["entity1"].astype(str), frame["entity2"].astype(str))}


def pick_complexes(n: int, per_complex: int, seed: int, directory: Path,
                   linked_in: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """`n` CORUM complexes with disjoint gene sets, `per_complex` members each (random, seeded). `linked_in`:
    annotation sources each of which must list a pair of a complex's screened members (a complex without such a
    pair is passed over, and the pair is screened), so that those sources' recall is measurable on the screen."""
    table = {}
    for line in (directory / "CORUM_clusters.tsv").read_text().splitlines():
        name, _, genes = line.partition("\t")
        members = sorted({g for g in genes.split() if _SYMBOL.match(g)})
        if per_complex <= len(members) <= 3 * per_complex + 4:
            table[name] = members
    pairs = [known_pairs(directory, source) for source in linked_in]
    r = rng(seed, _PICK)
    names = sorted(table)
    order = r.permutation(len(names))
    taken: set[str] = set()
    picked: dict[str, list[str]] = {}
    for i in order:
        free = [g for g in table[names[i]] if g not in taken]
        if len(free) < per_complex:
            continue
        must: list[str] = []
        free_set = set(free)
        for source_pairs in pairs:
            if any(frozenset((a, b)) in source_pairs for a in must for b in must if a < b):
                continue
            linked = sorted(tuple(sorted(p)) for p in source_pairs if len(p) == 2 and p <= free_set)
            if not linked:
                must = []
                break
            must = sorted(set(must) | set(linked[int(r.integers(len(linked)))]))
        if pairs and (not must or len(must) > per_complex):
            continue
        rest = [g for g in free if g not in must]
        genes = sorted(must + r.choice(rest, size=per_complex - len(must), replace=False).tolist())
        picked[names[i]] = genes
        taken.update(table[names[i]])  # whole complex: overlapping complexes would share members' phenotypes
        if len(picked) == n:
            break
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} disjoint CORUM complexes with {per_complex} members"
                         f"{' and a pair listed by ' + ', '.join(linked_in) if linked_in else ''}; ask for fewer")
    return picked


def pick_null_genes(n: int, seed: int, directory: Path) -> list[str]:
    annotated = {g for source in SOURCES for pair in known_pairs(directory, source) for g in pair}
    free = [g for g in OLFACTORY if g not in annotated]
    if n > len(free):
        raise SystemExit(f"--null-genes {n}: only {len(free)} olfactory-receptor genes are free of annotations")
    return sorted(rng(seed, _PICK, "null").choice(free, size=n, replace=False).tolist())


def make_design(*, complexes: int, genes_per_complex: int, null_genes: int, guides: int, experiments: int,
                plates: int, strength: float, batch_strength: float, gene_noise: float, seed: int,
                linked_in: tuple[str, ...] = ()) -> Design:
    directory = annotation_dir()
    picked = pick_complexes(complexes, genes_per_complex, seed, directory, linked_in)
    nulls = pick_null_genes(null_genes, seed, directory)
    exp_names = [f"gene-{e + 1:03d}" for e in range(experiments)]
    experiment_of: dict[str, str] = {}
    for k, genes in enumerate(list(picked.values()) + [nulls]):  # deal each complex's members over experiments
        r = rng(seed, _LAYOUT, "deal", k)
        start = int(r.integers(experiments))
        for j, g in enumerate(r.permutation(genes).tolist()):
            experiment_of[g] = exp_names[(start + j) % experiments]
    effect: dict[str, list[float]] = {}
    penetrance: dict[str, float] = {}
    efficiency: dict[str, float] = {}
    for name, genes in picked.items():
        r = rng(seed, _EFFECT, name)
        u = r.normal(size=P)
        direction = u / np.linalg.norm(u) * r.uniform(1.5, 2.5)
        for g in genes:
            rg = rng(seed, _GENE, g)
            own = rg.normal(size=P) / np.sqrt(P) * gene_noise
            effect[g] = (strength * rg.uniform(0.7, 1.3) * (direction + own)).tolist()
            penetrance[g] = float(rg.uniform(0.5, 0.95))
    for g in nulls:
        effect[g] = [0.0] * P
        penetrance[g] = 0.0
    for g in sorted(experiment_of):
        for k in range(1, guides + 1):
            rk = rng(seed, _GUIDE, g, k)
            efficiency[f"{g}_guide_{k}"] = float(0.15 if rk.uniform() < 0.1 else rk.uniform(0.55, 1.0))
    exp_shift, plate_shift, gain, background, falloff = {}, {}, {}, {}, {}
    for e in exp_names:
        re_ = rng(seed, _BATCH, e)
        exp_shift[e] = (batch_strength * re_.normal(0, 0.45, P)).tolist()
        exp_gain = np.exp(batch_strength * re_.normal(0, 0.35, N_CHANNELS))
        for p in range(1, plates + 1):
            key = f"{e}/{p}"
            rp = rng(seed, _BATCH, e, p)
            plate_shift[key] = (batch_strength * rp.normal(0, 0.2, P)).tolist()
            gain[key] = (exp_gain * np.exp(batch_strength * rp.normal(0, 0.15, N_CHANNELS))).tolist()
            background[key] = (rp.uniform(4, 10, N_CHANNELS) + batch_strength * rp.uniform(0, 12, N_CHANNELS)).tolist()
            falloff[key] = float(batch_strength * rp.uniform(0.0, 0.35))
    return Design(picked, nulls, experiment_of, effect, penetrance, efficiency, exp_shift, plate_shift, gain,
                  background, falloff)


def make_metadata(design: Design, guides: int, plates: int, controls: int, seed: int) -> pd.DataFrame:
    """Every guide of an experiment once on each of its plates, plus `controls` EMPTY_control wells a plate."""
    rows = []
    for e in sorted(set(design.experiment_of.values())):
        genes = sorted(g for g, x in design.experiment_of.items() if x == e)
        for plate in range(1, plates + 1):
            wells = [(g, f"{g}_guide_{k}") for g in genes for k in range(1, guides + 1)]
            wells += [(CONTROL, CONTROL)] * controls
            spots = rng(seed, _LAYOUT, e, plate).choice(1536, size=len(wells), replace=False)
            for spot, (gene, treatment) in zip(spots, wells):
                address = address_1536(int(spot))
                rows.append(dict(well_id=f"{e}_{plate}_{address}", experiment_name=e, plate=plate, address=address,
                                 gene=gene, treatment=treatment, SMILES=None, concentration=None,
                                 perturbation_type="CRISPR", cell_type="HUVEC"))
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    return table.sort_values(["experiment_name", "plate", "address"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- the images
BASE_INTENSITY = np.array([0.85, 0.45, 0.5, 0.4, 0.55, 0.5])  # w1..w6 before gains, ~[0, 1]


def _stamp(canvas: np.ndarray, cy: float, cx: float, sigma: float, amp: float) -> None:
    """Add a Gaussian spot (3 sigma window) at (cy, cx)."""
    h, w = canvas.shape
    r = int(3 * sigma) + 1
    y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h), max(int(cx) - r, 0), min(int(cx) + r + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def render_well(row: pd.Series, design: Design, shape: tuple[int, int], seed: int) -> np.ndarray:
    """The well's 6 channels, uint8 (6, H, W)."""
    h, w = shape
    scale = min(h, w) / 128.0
    gene, treatment = str(row["gene"]), str(row["treatment"])
    key = f"{row['experiment_name']}/{int(row['plate'])}"
    r = rng(seed, _CELLS, row["well_id"])
    shift = np.asarray(design.experiment_shift[row["experiment_name"]]) + np.asarray(design.plate_shift[key])
    effect = np.asarray(design.gene_effect.get(gene, [0.0] * P))
    p_ko = design.penetrance.get(gene, 0.0) * design.guide_efficiency.get(treatment, 0.0)
    n_cells = int(np.clip(r.poisson(32 * scale ** 2 * np.exp(0.35 * (shift[13] + p_ko * effect[13]))), 4, 80))
    knocked = r.uniform(size=n_cells) < p_ko
    z = shift + r.normal(0, 0.3, (n_cells, P)) + knocked[:, None] * r.uniform(0.6, 1.4, (n_cells, 1)) * effect
    img = np.zeros((N_CHANNELS, h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    centres = r.uniform([0, 0], [h, w], (n_cells, 2))
    for i in range(n_cells):
        zi = z[i]
        cy, cx = centres[i]
        intensity = BASE_INTENSITY * np.exp(0.3 * zi[:6])
        rn = 4.2 * scale * np.exp(0.22 * zi[6])
        rc = rn * 2.1 * np.exp(0.22 * (zi[7] - zi[6]))
        elong = 1.0 + 0.35 * abs(np.tanh(zi[8]))
        theta = r.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        win = int(rc * elong * 1.3) + 2
        y0, y1 = max(int(cy) - win, 0), min(int(cy) + win + 1, h)
        x0, x1 = max(int(cx) - win, 0), min(int(cx) + win + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u, v = c * dx + s * dy, -s * dx + c * dy
        dn = np.sqrt((u / (rn * elong)) ** 2 + (v * elong / rn) ** 2)          # 1 on the nucleus edge
        wob = 1 + 0.12 * np.sin(3 * np.arctan2(v, u) + r.uniform(0, 2 * np.pi))
        dc = np.sqrt(u ** 2 + v ** 2) / (rc * wob)                                # 1 on the cell edge
        nucleus = np.clip((1.0 - dn) * 4, 0, 1)
        cell = np.clip((1.0 - dc) * 3, 0, 1)
        cyto = np.clip(cell - nucleus, 0, 1)
        ring = np.exp(-((dc - 0.95) ** 2) / 0.006)
        region = (slice(y0, y1), slice(x0, x1))
        img[0][region] += intensity[0] * nucleus
        perinuclear = np.exp(-np.clip(dc - rn / rc, 0, None) * 3.0 * np.exp(0.4 * zi[12]))
        img[1][region] += intensity[1] * cyto * (0.35 + 0.65 * perinuclear)
        fibres = 0.5 + 0.5 * np.cos(2 * np.pi * (u * np.cos(0.3) + v * np.sin(0.3)) / (2.5 * scale))
        img[2][region] += intensity[2] * (0.6 * ring * cell + 0.4 * cell * fibres / (1 + np.exp(-1.5 * zi[11])))
        img[3][region] += intensity[3] * 0.35 * cyto
        img[5][region] += intensity[5] * (0.75 * ring + 0.15 * cyto)
        img[4][region] += intensity[4] * 0.25 * cyto
        for _ in range(r.poisson(2.5 * np.exp(0.5 * zi[10]))):                    # nucleoli (RNA)
            a, d = r.uniform(0, 2 * np.pi), rn * 0.5 * np.sqrt(r.uniform())
            _stamp(img[3], cy + d * np.sin(a), cx + d * np.cos(a), 0.9 * scale, intensity[3] * 1.2)
        for _ in range(r.poisson(10 * scale ** 2 * np.exp(0.5 * zi[9]))):          # mitochondrial puncta
            a, d = r.uniform(0, 2 * np.pi), rn + (rc - rn) * r.uniform(0.1, 0.9)
            _stamp(img[4], cy + d * np.sin(a), cx + d * np.cos(a), 0.8 * scale, intensity[4] * 0.9)
        a = r.uniform(0, 2 * np.pi)                                                 # Golgi beside the nucleus (WGA)
        _stamp(img[5], cy + 1.3 * rn * np.sin(a), cx + 1.3 * rn * np.cos(a), 1.6 * scale, intensity[5] * 0.8)
    texture = gaussian_filter(r.normal(0, 1, (N_CHANNELS, h, w)), sigma=(0, 1.0 * scale, 1.0 * scale))
    img *= 1 + 0.25 * texture
    ry, rx = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    illumination = 1 - design.falloff[key] * (ry ** 2 + rx ** 2) / 2
    gain = np.asarray(design.gain[key]) * np.exp(r.normal(0, 0.03, N_CHANNELS))
    grey = img * illumination * gain[:, None, None] * 150 + np.asarray(design.background[key])[:, None, None]
    grey += r.normal(0, 1.0, grey.shape) * np.sqrt(np.maximum(grey, 1) * 0.5)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- writing
def generate(out: str | Path, size: str = "128", complexes: int = 16, genes_per_complex: int = 4,
             null_genes: int = 16, guides: int = 3, experiments: int = 3, plates: int = 2, controls: int = 20,
             strength: float = 1.0, batch_strength: float = 1.0, gene_noise: float = 0.5,
             rows_per_shard: int = 500, seed: int = 0, linked_in: tuple[str, ...] = ()) -> Path:
    """Write the screen under `out` (see the module docstring); returns `out`."""
    out = Path(out)
    shape = parse_size(size)
    design = make_design(complexes=complexes, genes_per_complex=genes_per_complex, null_genes=null_genes,
                         guides=guides, experiments=experiments, plates=plates, strength=strength,
                         batch_strength=batch_strength, gene_noise=gene_noise, seed=seed,
                         linked_in=tuple(linked_in))
    metadata = make_metadata(design, guides, plates, controls, seed)
    write_rxrx3_core(out, metadata, lambda row: render_well(row, design, shape, seed), rows_per_shard=rows_per_shard)
    truth = {"generator": "tests/formats/rxrx3_maps.py", "axes": list(AXES),
             "parameters": dict(size=size, complexes=complexes, genes_per_complex=genes_per_complex,
                                null_genes=null_genes, guides=guides, experiments=experiments, plates=plates,
                                controls=controls, strength=strength, batch_strength=batch_strength,
                                gene_noise=gene_noise, rows_per_shard=rows_per_shard, seed=seed,
                                **({"linked_in": list(linked_in)} if linked_in else {})),
             **asdict(design)}
    (out / "synthetic_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--size", default="128", help="image size N or WxH (the real set: 512)")
    p.add_argument("--complexes", type=int, default=16, help="CORUM complexes (disjoint), each a phenotype")
    p.add_argument("--genes-per-complex", type=int, default=4)
    p.add_argument("--null-genes", type=int, default=16, help="olfactory-receptor genes with no phenotype")
    p.add_argument("--guides", type=int, default=3, help="guides per gene")
    p.add_argument("--experiments", type=int, default=3, help="experiments; genes are split over them")
    p.add_argument("--plates", type=int, default=2, help="plates per experiment (each holds every guide once)")
    p.add_argument("--controls", type=int, default=20, help="EMPTY_control wells per plate")
    p.add_argument("--strength", type=float, default=1.0, help="phenotype strength (0: none)")
    p.add_argument("--batch-strength", type=float, default=1.0, help="batch effect strength (0: none)")
    p.add_argument("--gene-noise", type=float, default=0.5, help="a gene's own deviation from its complex")
    p.add_argument("--rows-per-shard", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linked-in", nargs="+", default=[], choices=SOURCES, metavar="SOURCE",
                   help="screen only complexes of which each named source lists a pair of screened members (that "
                        "source's recall is then measurable: SIGNOR lists few pairs inside random complexes)")
    a = p.parse_args(argv)
    generate(a.out, size=a.size, complexes=a.complexes, genes_per_complex=a.genes_per_complex,
             null_genes=a.null_genes, guides=a.guides, experiments=a.experiments, plates=a.plates,
             controls=a.controls, strength=a.strength, batch_strength=a.batch_strength, gene_noise=a.gene_noise,
             rows_per_shard=a.rows_per_shard, seed=a.seed, linked_in=tuple(a.linked_in))


if __name__ == "__main__":
    main()
