"""The synthetic data-set writer: `synthesize(out_dir)` lays out experiments, plates and wells like RxRx1 and
writes them in the exact Kaggle layout.

It writes `{train,test}/{experiment}/Plate{p}/{well}_s{site}_w{channel}.png` (images from `cells.py`)
and every Kaggle CSV (train, test, train_controls, test_controls, pixel_stats, sample_submission) plus
`test_truth.csv`, the held-out labels of the test treatments, and `synth.json`, the generator's ground truth
(groups, rotations); optionally train.zip/test.zip like Kaggle's archives.

Output is a pure function of the arguments (byte-identical for any `workers`): every random draw comes from a
generator keyed by (seed, purpose, ids), never from a shared stream.
"""
from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ....processes import require_importable_main
from ....params import parse_count
from ....errors import ConfigError
from ..layout import (
    ALL_WELLS,
    CELL_TYPES,
    CHANNELS,
    N_CHANNELS,
    N_TREATMENTS,
    NEGATIVE_CONTROL_SIRNA,
    NEGATIVE_CONTROL_WELL,
    PLATES,
    POSITIVE_CONTROL_SIRNAS,
    WellType,
    make_id_code,
)
from .cells import KEY_LAYOUT, KEY_SITE, N_TEXTURE, PROFILES, SynthProfile, class_morphology, encode_png, \
    pixel_stats, render_synthetic_site, site_batch, texture_features

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["synthesize", "AUTO_CHECK_MIN_SITES", "LAYOUTS", "RXRX1_EXPERIMENTS", "rxrx1_experiments", "rxrx1_wells"]

log = logging.getLogger(__name__)

_CHUNK_SITES = 8
AUTO_CHECK_MIN_SITES = 160

# "custom": the experiment counts, classes and controls given as arguments; "rxrx1": the real data set's layout
# and cardinality (docs/rxrx1.md), at any image size.
LAYOUTS = ("custom", "rxrx1")
# The real experiments: (train, test) experiments per cell type, numbered on from 01 (train first).
RXRX1_EXPERIMENTS: dict[str, tuple[int, int]] = {"HEPG2": (7, 4), "HUVEC": (16, 8), "RPE": (7, 4), "U2OS": (3, 2)}
# Missing treatment wells of the real set: train.csv has 36,515 rows (33 x 4 x 277 = 36,564: 49 missing, 18 of
# them in HUVEC-14, which has 1,090 treatments), test.csv 19,897 (18 x 4 x 277 = 19,944: 47 missing). Which wells
# are missing is drawn from the seed; the counts are the real ones.
RXRX1_MISSING = {"HUVEC-14": 18, "train": 49, "test": 47}
_KEY_MISSING = 7


def rxrx1_experiments() -> tuple[list[str], list[str]]:
    """(train, test) experiment names of the real RxRx1: HEPG2-01..07, HUVEC-01..16, RPE-01..07, U2OS-01..03 and
    HEPG2-08..11, HUVEC-17..24, RPE-08..11, U2OS-04..05."""
    train = [f"{ct}-{i:02d}" for ct, (k, _) in RXRX1_EXPERIMENTS.items() for i in range(1, k + 1)]
    test = [f"{ct}-{i:02d}" for ct, (k, t) in RXRX1_EXPERIMENTS.items() for i in range(k + 1, k + t + 1)]
    return sorted(train), sorted(test)


# A site task: (relative path prefix "train/HEPG2-01/Plate1/B03_s1", sirna, cell type, exp index, plate,
# rng key tuple). Module-level so ProcessPoolExecutor can pickle it.
_Task = tuple[str, int, str, int, int, tuple[int, ...]]


def _render_chunk(out_dir: str, seed: int, height: int, width: int, tasks: list[_Task],
                  texture: bool, profile: SynthProfile = PROFILES["default"]) -> tuple[list[np.ndarray], float]:
    """Render, encode and write the sites of `tasks`; return per site the pixel statistics (6 x 5) and, when
    `texture`, the texture features of the classifier check (else zeros); and the CPU seconds it took."""
    results = []
    cpu0 = time.process_time()
    morph_cache: dict[tuple[int, str], dict[str, float]] = {}
    for prefix, sirna, cell_type, exp_index, plate, key in tasks:
        morph = morph_cache.get((sirna, cell_type))
        if morph is None:
            morph = morph_cache[(sirna, cell_type)] = class_morphology(sirna, seed, cell_type, profile)
        rng = np.random.default_rng([seed, KEY_SITE, *key])
        batch = site_batch(seed, exp_index, plate, rng, CELL_TYPES.index(cell_type), profile.plate_gain)
        img = render_synthetic_site(height, width, morph, cell_type, batch, rng, profile.size_spread)
        for ci, channel in enumerate(CHANNELS):
            with open(os.path.join(out_dir, f"{prefix}_w{channel}.png"), "wb") as fh:
                fh.write(encode_png(img[ci]))
        tex = texture_features(img) if texture else np.zeros(N_CHANNELS * N_TEXTURE)
        results.append(np.concatenate([pixel_stats(img).ravel(), tex]))
    return results, time.process_time() - cpu0


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(x) for x in size)
        except (TypeError, ValueError):
            raise ConfigError(f"size must be an int or (height, width); got {size!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive; got (height={h}, width={w})")
    return h, w


def _plan(classes: int, train_exps: Sequence[str], test_exps: Sequence[str],
          positive_controls: int, missing_wells: float, seed: int
          ) -> tuple[pd.DataFrame, list[list[int]], dict[str, int], list[str]]:
    """Which siRNA sits in which well of which plate of which experiment (`train_exps`, `test_exps`: sorted
    names). Returns (wells, groups, rotations, experiment order)."""
    import pandas as pd

    rng = np.random.default_rng([seed, KEY_LAYOUT])
    per_group = classes // 4
    perm = rng.permutation(classes)
    groups = [sorted(int(x) for x in perm[g * per_group:(g + 1) * per_group]) for g in range(4)]
    # Train uses rotations 0..2 (the first train experiment, by name, is rotation 0 so group g is on its
    # plate g+1, the convention of derive_plate_groups); the 4th rotation first appears in test.
    rotations = {e: i % 3 for i, e in enumerate(train_exps)}
    rotations.update({e: (3 + i) % 4 for i, e in enumerate(test_exps)})
    order = train_exps + test_exps
    train_set = set(train_exps)

    candidates = np.array([w for w in ALL_WELLS if w != NEGATIVE_CONTROL_WELL])
    pos_sirnas = POSITIVE_CONTROL_SIRNAS[:positive_controls]
    rows: list[tuple] = []
    for exp_index, exp in enumerate(order):
        dataset = "train" if exp in train_set else "test"
        for plate in PLATES:
            group = groups[(plate - 1 + rotations[exp]) % 4]
            prng = np.random.default_rng([seed, KEY_LAYOUT, exp_index, plate])
            wells = prng.choice(candidates, size=positive_controls + per_group, replace=False)
            treat_sirnas = prng.permutation(group)
            keep = prng.random(per_group) >= missing_wells
            rows.append((dataset, exp, exp_index, plate, NEGATIVE_CONTROL_WELL,
                         WellType.NEGATIVE_CONTROL.value, NEGATIVE_CONTROL_SIRNA))
            for w, s in zip(wells[:positive_controls], pos_sirnas):
                rows.append((dataset, exp, exp_index, plate, str(w), WellType.POSITIVE_CONTROL.value, int(s)))
            for w, s, k in zip(wells[positive_controls:], treat_sirnas, keep):
                if k:
                    rows.append((dataset, exp, exp_index, plate, str(w), WellType.TREATMENT.value, int(s)))
    frame = pd.DataFrame(rows, columns=["dataset", "experiment", "exp_index", "plate", "well", "well_type", "sirna"])
    frame["cell_type"] = frame["experiment"].str.split("-").str[0]
    frame["id_code"] = [make_id_code(e, p, w) for e, p, w in zip(frame["experiment"], frame["plate"], frame["well"])]
    frame = frame.sort_values(["experiment", "plate", "well"], kind="stable").reset_index(drop=True)
    return frame, groups, rotations, order


def _drop_rxrx1_missing(wells: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Remove the real set's number of treatment wells (RXRX1_MISSING), chosen from the seed."""
    rng = np.random.default_rng([seed, KEY_LAYOUT, _KEY_MISSING])
    treat = wells["well_type"] == WellType.TREATMENT.value
    huvec14 = wells["experiment"] == "HUVEC-14"
    drop: list[int] = []
    pools = [(treat & huvec14, RXRX1_MISSING["HUVEC-14"]),
             (treat & ~huvec14 & (wells["dataset"] == "train"), RXRX1_MISSING["train"] - RXRX1_MISSING["HUVEC-14"]),
             (treat & (wells["dataset"] == "test"), RXRX1_MISSING["test"])]
    for pool, n in pools:
        rows = np.flatnonzero(pool.to_numpy())
        drop += rng.choice(rows, size=n, replace=False).tolist()
    return wells.drop(index=wells.index[drop]).reset_index(drop=True)


def rxrx1_wells(seed: int = 0) -> tuple[pd.DataFrame, list[list[int]], dict[str, int]]:
    """The wells `synthesize(layout="rxrx1", seed=seed)` writes, without writing anything: (one row per well with
    dataset, experiment, plate, well, well_type, sirna, cell_type, id_code; the 4 plate groups; the rotation of
    each experiment)."""
    train_exps, test_exps = rxrx1_experiments()
    wells, groups, rotations, _ = _plan(N_TREATMENTS, train_exps, test_exps, 30, 0.0, seed)
    return _drop_rxrx1_missing(wells, seed), groups, rotations


def _write_csvs(out: Path, wells: pd.DataFrame, stats: pd.DataFrame | None) -> None:
    base = ["id_code", "experiment", "plate", "well"]
    treat = wells["well_type"] == WellType.TREATMENT.value
    train = wells["dataset"] == "train"
    wells.loc[train & treat, base + ["sirna"]].to_csv(out / "train.csv", index=False)
    wells.loc[~train & treat, base].to_csv(out / "test.csv", index=False)
    wells.loc[train & ~treat, base + ["sirna", "well_type"]].to_csv(out / "train_controls.csv", index=False)
    wells.loc[~train & ~treat, base + ["sirna", "well_type"]].to_csv(out / "test_controls.csv", index=False)
    sub = wells.loc[~train & treat, ["id_code"]].assign(sirna=0)  # Kaggle's sample submission predicts 0
    sub.to_csv(out / "sample_submission.csv", index=False)
    wells.loc[~train & treat, ["id_code", "sirna"]].to_csv(out / "test_truth.csv", index=False)
    if stats is not None:
        stats.to_csv(out / "pixel_stats.csv", index=False)


def _write_zip(out: Path, dataset: str) -> Path:
    """`{dataset}.zip` with members `{experiment}/Plate{p}/...` (no `{dataset}/` prefix), like Kaggle's archives
    that are extracted into a `{dataset}/` folder. Stored (PNG is already compressed), fixed timestamps so the
    archive is byte-identical across runs."""
    root = out / dataset
    path = out / f"{dataset}.zip"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=(2019, 6, 27, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, (root / rel).read_bytes())
    return path


def _classifier_check(features: np.ndarray, labels: np.ndarray, is_train: np.ndarray, classes: int,
                      seed: int) -> dict[str, Any] | None:
    """Train on train-experiment treatment sites, score on test-experiment treatment sites: pixel-stats features
    (mean/std, 12 per site) should be near chance; texture features show the morphology is learnable."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        log.warning("scikit-learn is not installed (pip install 'cellio[synth]'): skipping the classifier check")
        return None
    train, test = is_train, ~is_train
    if train.sum() < 2 or test.sum() < 1 or len(np.unique(labels[train])) < 2:
        return None
    idx_pix = np.r_[[c * 5 + 0 for c in range(N_CHANNELS)], [c * 5 + 1 for c in range(N_CHANNELS)]]
    out: dict[str, Any] = {"n_train_sites": int(train.sum()), "n_eval_sites": int(test.sum()),
                           "chance": 1.0 / classes}
    counts = np.bincount(labels[test], minlength=classes)
    out["majority_chance"] = float(counts.max() / counts.sum())
    for name, cols in (("pixel_stats", idx_pix), ("texture", np.arange(N_CHANNELS * 5, features.shape[1]))):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
        model.fit(features[train][:, cols], labels[train])
        out[f"{name}_accuracy"] = float((model.predict(features[test][:, cols]) == labels[test]).mean())
    return out


def synthesize(out_dir: str | os.PathLike[str], *, classes: int = 40, train_experiments_per_cell_type: int = 2,
               test_experiments_per_cell_type: int = 1, cell_types: Iterable[str] = CELL_TYPES, sites: int = 2,
               size: int | Sequence[int] = (512, 512), positive_controls: int = 4,
               missing_wells: float | None = None, seed: int = 0, workers: int | None = None, zip: bool = False,
               pixel_stats: bool = True, progress: bool = True, check: bool | None = None,
               profile: str = "default", layout: str = "custom",
               experiments: Iterable[str] | None = None) -> dict[str, Any]:
    """Write a synthetic RxRx1 data set in the exact Kaggle layout under `out_dir`; return a summary dict
    (counts, seconds, sites/s, groups, rotations, and the classifier check).

    The classifier check (`summary["classifier"]`) trains LogisticRegression on the train experiments' treatment
    sites and scores the test experiments': on pixel-stats mean/std it should be near chance, on affine-invariant
    texture statistics well above. `check=None` runs it only when there are at least
    AUTO_CHECK_MIN_SITES test treatment sites (importing scikit-learn costs seconds; tiny test sets skip it).
    `profile`: "default" or "hard" (cells.PROFILES: subtle, cell-type-specific phenotypes, stronger plate gain,
    spread of cell sizes, missing wells); `missing_wells` defaults to the profile's.

    `layout="rxrx1"`: the real data set's layout and cardinality (RXRX1_EXPERIMENTS: 33 train and 18 test
    experiments; 1,108 treatments in 4 plate groups of 277, 30 positive controls and the B02 negative control per
    plate, 2 sites per well, the real numbers of missing treatment wells: 125,472 sites, 19,897 test treatment
    wells) at any `size`; it fixes `classes`, the experiments, `cell_types`, `positive_controls`, `sites` and
    `missing_wells` (those arguments are ignored). `experiments` keeps only these experiments of the layout (each
    with the same wells, labels and pixels as in the whole layout): a reduced real-layout set.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if layout == "rxrx1":
        classes, positive_controls, sites, missing_wells, cell_types = N_TREATMENTS, 30, 2, 0.0, CELL_TYPES
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}; got {profile!r}")
    prof = PROFILES[profile]
    missing_wells = prof.missing_wells if missing_wells is None else missing_wells
    cell_types = tuple(cell_types)
    h, w = _parse_size(size)
    unknown = [c for c in cell_types if c not in CELL_TYPES]
    if unknown or not cell_types or len(set(cell_types)) != len(cell_types):
        raise ConfigError(f"cell_types must be distinct names from {CELL_TYPES}; got {cell_types!r}")
    if classes < 4 or classes % 4 or classes > N_TREATMENTS:
        raise ConfigError(f"classes must be a multiple of 4 in 4..{N_TREATMENTS} (4 plate groups); got {classes}")
    if not 0 <= positive_controls <= len(POSITIVE_CONTROL_SIRNAS):
        raise ConfigError(f"positive_controls must be in 0..{len(POSITIVE_CONTROL_SIRNAS)}; got {positive_controls}")
    if classes // 4 + positive_controls > len(ALL_WELLS) - 1:
        raise ConfigError(f"classes/4 + positive_controls = {classes // 4 + positive_controls} wells do not fit "
                          f"the {len(ALL_WELLS) - 1} free wells of a plate")
    if train_experiments_per_cell_type < 1 or test_experiments_per_cell_type < 0:
        raise ConfigError("train_experiments_per_cell_type must be >= 1 and test_experiments_per_cell_type >= 0; "
                          f"got {train_experiments_per_cell_type}, {test_experiments_per_cell_type}")
    if train_experiments_per_cell_type + test_experiments_per_cell_type > 99:
        raise ConfigError("at most 99 experiments per cell type (two-digit names)")
    if not 1 <= sites <= 9:
        raise ConfigError(f"sites must be in 1..9; got {sites}")
    if not 0.0 <= missing_wells < 1.0:
        raise ConfigError(f"missing_wells must be a fraction in [0, 1); got {missing_wells}")
    workers = parse_count("workers", workers)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")

    if layout == "rxrx1":
        train_exps, test_exps = rxrx1_experiments()
    else:
        train_exps = sorted(f"{ct}-{i:02d}" for ct in cell_types
                            for i in range(1, train_experiments_per_cell_type + 1))
        test_exps = sorted(f"{ct}-{i:02d}" for ct in cell_types for i in range(
            train_experiments_per_cell_type + 1, train_experiments_per_cell_type + test_experiments_per_cell_type + 1))
    keep_exps = None if experiments is None else list(experiments)
    if keep_exps is not None:
        unknown = sorted(set(keep_exps) - set(train_exps) - set(test_exps))
        if unknown or not keep_exps:
            raise ConfigError(f"experiments: {unknown or 'none given'} not in this layout; expected some of "
                              f"{train_exps + test_exps}")

    t0 = time.perf_counter()
    out = Path(out_dir)
    if (out / "train.csv").exists():
        # Files of a larger earlier run would survive next to the new ones; the CSVs only list the new ones.
        log.warning("%s already holds a data set; overwriting it (remove the directory first for a clean set)", out)
    wells, groups, rotations, order = _plan(classes, train_exps, test_exps, positive_controls, missing_wells, seed)
    if layout == "rxrx1":  # (as rxrx1_wells)
        wells = _drop_rxrx1_missing(wells, seed)
    if keep_exps is not None:
        wells = wells[wells["experiment"].isin(keep_exps)].reset_index(drop=True)
        order = [e for e in order if e in set(keep_exps)]
    site_rows = wells.loc[wells.index.repeat(sites)].reset_index(drop=True)
    site_rows["site"] = np.tile(np.arange(1, sites + 1), len(wells))
    well_index = {wname: i for i, wname in enumerate(ALL_WELLS)}
    tasks: list[_Task] = []
    for r in site_rows.itertuples(index=False):
        prefix = f"{r.dataset}/{r.experiment}/Plate{r.plate}/{r.well}_s{r.site}"
        tasks.append((prefix, int(r.sirna), r.cell_type, int(r.exp_index), int(r.plate),
                      (int(r.exp_index), int(r.plate), well_index[r.well], int(r.site))))
    for d in {t[0].rsplit("/", 1)[0] for t in tasks}:
        (out / d).mkdir(parents=True, exist_ok=True)

    treat = (site_rows["well_type"] == WellType.TREATMENT.value).to_numpy()
    is_train = (site_rows["dataset"] == "train").to_numpy()
    if check is None:  # (not on the rxrx1 layout: a 1,108-class regression on ~80k sites takes long)
        check = layout == "custom" and int((treat & ~is_train).sum()) >= AUTO_CHECK_MIN_SITES
    check = bool(check)
    chunks = [tasks[i:i + _CHUNK_SITES] for i in range(0, len(tasks), _CHUNK_SITES)]
    n_workers = min(workers or os.cpu_count() or 1, max(len(chunks), 1))
    from tqdm.auto import tqdm

    results: list[np.ndarray] = []
    cpu_s = 0.0
    with tqdm(total=len(tasks), unit="site", desc="synth", disable=not progress) as bar:
        if n_workers <= 1:
            for chunk in chunks:
                part, cpu = _render_chunk(str(out), seed, h, w, chunk, check, prof)
                results += part
                cpu_s += cpu
                bar.update(len(chunk))
        else:
            import multiprocessing

            require_importable_main(f"cellio.synthesize(workers={n_workers})", "spawn")
            ctx = multiprocessing.get_context("spawn")  # safe even if the caller has threads or torch loaded
            with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
                futures = [pool.submit(_render_chunk, str(out), seed, h, w, chunk, check, prof) for chunk in chunks]
                for fut in futures:  # in submission order: output is independent of workers
                    part, cpu = fut.result()
                    results += part
                    cpu_s += cpu
                    bar.update(len(part))
    feats = np.stack(results)
    render_s = time.perf_counter() - t0

    stats = None
    if pixel_stats:
        ps = feats[:, :N_CHANNELS * 5].reshape(len(site_rows), N_CHANNELS, 5)
        import pandas as pd

        stats = pd.DataFrame({
            "id_code": np.repeat(site_rows["id_code"].to_numpy(), N_CHANNELS),
            "experiment": np.repeat(site_rows["experiment"].to_numpy(), N_CHANNELS),
            "plate": np.repeat(site_rows["plate"].to_numpy(), N_CHANNELS),
            "well": np.repeat(site_rows["well"].to_numpy(), N_CHANNELS),
            "site": np.repeat(site_rows["site"].to_numpy(), N_CHANNELS),
            "channel": np.tile(np.asarray(CHANNELS), len(site_rows)),
            "mean": ps[:, :, 0].ravel().round(4), "std": ps[:, :, 1].ravel().round(4),
            "median": ps[:, :, 2].ravel(), "min": ps[:, :, 3].ravel().astype(np.int64),
            "max": ps[:, :, 4].ravel().astype(np.int64),
        })
    _write_csvs(out, wells, stats)
    zips = [str(_write_zip(out, d)) for d in ("train", "test") if zip and (out / d).is_dir()]

    check_result = _classifier_check(feats[treat], site_rows["sirna"].to_numpy()[treat], is_train[treat],
                                     classes, seed) if check else None
    truth = {
        "seed": seed, "classes": classes, "size": [h, w], "sites": sites, "cell_types": list(cell_types),
        "positive_controls": positive_controls, "missing_wells": missing_wells, "profile": profile,
        "groups": groups, "rotations": {e: rotations[e] for e in order},
    }
    if layout != "custom":  # (custom sets keep their synth.json byte for byte)
        truth["layout"] = layout
    (out / "synth.json").write_text(json.dumps(truth, indent=1) + "\n")
    seconds = time.perf_counter() - t0
    n_sites = len(site_rows)
    summary = {
        "out_dir": str(out.resolve()),
        "sites": n_sites,
        "train_sites": int((site_rows["dataset"] == "train").sum()),
        "test_sites": int((site_rows["dataset"] == "test").sum()),
        "wells": len(wells),
        "images": n_sites * N_CHANNELS,
        "experiments": order,
        "well_types": {k: int(v) for k, v in wells["well_type"].value_counts().sort_index().items()},
        "groups": groups,
        "rotations": truth["rotations"],
        "size": (h, w),
        "workers": n_workers,
        "render_seconds": render_s,
        "seconds": seconds,
        "sites_per_s": n_sites / render_s if render_s > 0 else float("inf"),
        # CPU time of the workers per site: a load-independent speed figure (1000 / cpu_ms_per_site sites/s per
        # busy core).
        "cpu_ms_per_site": 1000 * cpu_s / n_sites,
        "zips": zips,
        "classifier": check_result,
    }
    log.info("synthesized %d sites (%d images) in %.1f s (%.1f sites/s) under %s", n_sites, n_sites * 6,
             seconds, summary["sites_per_s"], out)
    return summary
