"""Run checkpoints over the loader's TTA views and keep every per-view logit with its site and view id.

The loader's eval mode yields each (site, view) exactly once, unshuffled: `tta="center"` (one crop), `"grid9"`
(nine crops), `"full"` (the whole site), each optionally times the 8 dihedral views. Nothing is averaged here;
aggregation (`trainer.infer.aggregate`) and the stacker (`trainer.infer.stacker`) work from the stored views.

    preds = predict("runs/f0/checkpoints/best.pt", "rxrx1.zarr", datasets=("test",), tta="grid9")
    preds.save("preds_test.npz"); load_predictions("preds_test.npz")

    python -m trainer.infer.predict --checkpoint runs/f0/checkpoints/best.pt --store rxrx1.zarr --datasets test \
        --tta grid9 [--dihedral] --out preds_test.npz
    python -m trainer.infer.predict --checkpoint runs/f0/checkpoints/best.pt --store rxrx1.zarr --datasets validation \
        --out oof_f0.npz        # the checkpoint's own held-out experiments (out-of-fold predictions)

With `out`, the logits stream to disk as they are predicted (`preds_test.logits.npy` beside `preds_test.npz`,
trainer/infer/logits.py): float16 when float32 would pass 1 GiB (`half=None`, the default), and the returned
Predictions reads them in blocks (a `LogitsFile`), so no step holds a whole split's views in memory.

Several --checkpoint arguments write one file each (`preds_test.0.npz`, `preds_test.1.npz`, ...), to be ensembled
by `python -m trainer.infer.aggregate --predictions ...`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellio.errors import ConfigError, MetadataError

from trainer.infer.logits import HALF_ABOVE_BYTES, LogitsFile, LogitsWriter
from trainer.training.disk import replaced_atomically

__all__ = ["Predictions", "predict", "predict_views", "load_predictions", "concat_predictions", "logits_path",
           "validation_experiments", "main"]

log = logging.getLogger(__name__)

_ARRAYS = ("logits", "index", "view", "classes")


@dataclass(frozen=True)
class Predictions:
    """Per-view logits of one model: row r is view `view[r]` of site `index[r]` (row of the store's site table)."""

    logits: np.ndarray   # (n_views_total, C) float32, or a LogitsFile (float16 or float32 on disk, read in blocks)
    index: np.ndarray    # (n_views_total,) int64
    view: np.ndarray     # (n_views_total,) int64
    classes: np.ndarray  # (C,) int64 raw sirna id of each column
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.index)
        if self.logits.shape != (n, len(self.classes)) or self.view.shape != (n,):
            raise ConfigError(f"Predictions: logits {self.logits.shape}, index ({n},), view {self.view.shape} and "
                              f"classes ({len(self.classes)},) do not fit together")

    def __len__(self) -> int:
        return len(self.index)

    def save(self, path: str | Path, *, half: bool = False) -> Path:
        """`.npz` with logits, index, view, classes and meta (JSON); atomic (temp file, then rename). Logits on
        disk (a LogitsFile) stay there: the .npz names their file (which must sit beside it) instead."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"index": self.index, "view": self.view, "classes": self.classes}
        meta = dict(self.meta)
        if isinstance(self.logits, LogitsFile):
            if self.logits.path.parent.resolve() != path.parent.resolve():
                raise ConfigError(f"Predictions.save: the logits file {self.logits.path} must be in {path.parent}")
            meta["logits_file"] = self.logits.path.name
        else:
            arrays["logits"] = self.logits.astype(np.float16 if half else np.float32)
        with replaced_atomically(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays, meta=np.array(json.dumps(meta)))
        return path

    def rows(self, mask: np.ndarray) -> Predictions:
        """The rows of `mask` (boolean or row numbers), in memory."""
        return Predictions(np.asarray(self.logits[mask], dtype=np.float32), self.index[mask], self.view[mask],
                           self.classes, dict(self.meta))


def load_predictions(path: str | Path) -> Predictions:
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"predictions file {path} does not exist (write it with python -m trainer.infer.predict)")
    with np.load(path, allow_pickle=False) as z:
        missing = [a for a in _ARRAYS if a not in z.files and a != "logits"]
        if missing:
            raise MetadataError(f"{path} is not a predictions file: missing arrays {missing}")
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        logits = (LogitsFile(path.with_name(meta["logits_file"])) if "logits_file" in meta
                  else z["logits"].astype(np.float32))
        return Predictions(logits, z["index"].astype(np.int64), z["view"].astype(np.int64),
                           z["classes"].astype(np.int64), meta)


def concat_predictions(parts: Sequence[Predictions], out: str | Path | None = None) -> Predictions:
    """Stack predictions of disjoint site sets with the same class map (e.g. every fold's out-of-fold views, or
    each cell type's fine-tuned model). With `out` the logits stream part by part, block by block, into out's
    `.logits.npy` sidecar (float16 when any part is, else float32) and the result is saved there; without, they
    are concatenated in memory."""
    from trainer.infer.logits import iter_rows

    if not parts:
        raise ConfigError("concat_predictions needs at least one Predictions")
    classes = parts[0].classes
    for i, p in enumerate(parts[1:], start=1):
        if not np.array_equal(p.classes, classes):
            raise ConfigError(f"concat_predictions: part {i} has another class map ({len(p.classes)} classes vs "
                              f"{len(classes)}); ensemble them with trainer.infer.aggregate.ensemble instead")
    keys = np.concatenate([p.index * 1_000_003 + p.view for p in parts])
    if len(np.unique(keys)) != len(keys):
        raise MetadataError("concat_predictions: the parts share (site, view) rows; they must be disjoint")
    index = np.concatenate([p.index for p in parts])
    view = np.concatenate([p.view for p in parts])
    meta = {"parts": [p.meta for p in parts]}
    if out is None:
        return Predictions(np.concatenate([np.asarray(p.logits, dtype=np.float32) for p in parts]), index, view,
                           classes, meta)
    half = any(np.dtype(p.logits.dtype) == np.float16 for p in parts)
    with LogitsWriter(logits_path(out), len(classes), np.float16 if half else np.float32) as writer:
        for p in parts:
            for _, block in iter_rows(p.logits):
                writer.append(block)
    preds = Predictions(LogitsFile(logits_path(out)), index, view, classes, meta)
    preds.save(out)
    return preds


def validation_experiments(cfg: Any, sites: Any) -> list[str]:
    """The held-out experiments of a checkpoint's config: trainer.training.folds.split_experiments, as its training
    run used."""
    from trainer.training.folds import split_experiments

    if cfg.data.val_fold < 0:
        raise ConfigError("this checkpoint trained on every experiment (data.val_fold=-1): it has no validation "
                          "experiments, so it cannot give out-of-fold predictions")
    return list(split_experiments(cfg.data, sites).val)


def predict_views(model: Any, cfg: Any, class_map: Any, store: Any, *, datasets: Sequence[str] | None = ("test",),
                  experiments: Sequence[str] | None = None, indices: Sequence[int] | None = None,
                  tta: str = "grid9", dihedral: bool = False, batch_size: int = 64, backend: str | None = None,
                  device: Any = None, crop_size: int | None = None, controls: bool = False,
                  num_workers: int | None = None, adabn: bool = False, rank: int = 0, world_size: int = 1,
                  progress: bool = True, desc: str = "predict", logits_out: str | Path | None = None,
                  half: bool | None = False) -> Predictions:
    """Per-view logits of an in-memory model (eval mode) over the selected sites, this rank's share of them.

    `cfg` is the model's training config: crop size, normalisation, augmentation preset, backend and workers come
    from it unless given. With `adabn` each plate is predicted with BatchNorm statistics recomputed on that plate
    (trainer.infer.adabn; one extra centre-view pass over the plate's sites). With `logits_out` (a .npy path) the
    logits stream there batch by batch (float16 with `half`; `half=None`: float16 when float32 would pass 1 GiB)
    and the returned Predictions reads them from it (trainer.infer.logits.LogitsFile)."""
    import torch
    from tqdm.auto import tqdm

    import cellio
    from trainer.training.runtime import in_model_layout

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    crop = crop_size or cfg.data.val_crop_size or cfg.data.crop_size
    common = dict(train=False, augment=cfg.data.augment, crop_size=crop, normalize=cfg.data.normalize,
                  backend=backend or cfg.data.backend, device="cuda" if dev.type == "cuda" else "cpu",
                  num_workers=num_workers if num_workers is not None else cfg.data.num_workers, datasets=datasets,
                  experiments=experiments, indices=indices, cell_types=cfg.data.cell_types or None,
                  controls=controls, last_batch="partial", batch_by="plate" if adabn else None)
    loader = cellio.create_loader(store, batch_size, rank=rank, world_size=world_size, tta=tta, dihedral=dihedral,
                                  **common)
    use_amp = dev.type == "cuda"
    states = None
    if adabn:
        from trainer.infer.adabn import bn_state, plate_bn_states

        stats = cellio.create_loader(store, batch_size, rank=0, world_size=1, tta="center", **common)
        states = plate_bn_states(model, stats, dev, store.sites, torch.bfloat16 if use_amp else None)
    experiment = store.sites["experiment"].to_numpy()
    n_cls = len(class_map)
    writer = None
    if logits_out is not None:
        if half is None:
            half = len(loader) * batch_size * n_cls * 4 > HALF_ABOVE_BYTES
        writer = LogitsWriter(logits_out, n_cls, np.float16 if half else np.float32)
    logits, index, view = [], [], []
    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, total=len(loader), desc=desc, disable=not progress):
            x = in_model_layout(batch["image"].to(dev, non_blocking=True), model)
            ct = batch["cell_type"].to(dev, non_blocking=True)
            plate_norm = contextlib.nullcontext() if states is None else \
                bn_state(model, states[(str(experiment[int(batch["index"][0])]), int(batch["plate"][0]))])
            with plate_norm, torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out_b = model(x.float() if not use_amp else x, ct)
            if writer is not None:
                writer.append(out_b.float().cpu().numpy())
            else:
                logits.append(out_b.float().cpu().numpy())
            index.append(batch["index"].cpu().numpy())
            view.append(batch["view"].cpu().numpy())
    elapsed = time.perf_counter() - t0
    if writer is not None:
        all_logits: Any = LogitsFile(writer.close())
    else:
        all_logits = np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32)
    preds = Predictions(
        all_logits,
        np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64),
        np.concatenate(view).astype(np.int64) if view else np.zeros(0, np.int64),
        np.asarray(class_map.classes, dtype=np.int64),
        {"store": str(getattr(store, "path", store)), "datasets": list(datasets) if datasets else None,
         "experiments": list(experiments) if experiments else None, "tta": tta, "dihedral": dihedral,
         "crop_size": crop, "normalize": cfg.data.normalize, "model": cfg.model.name, "adabn": adabn,
         "seconds": elapsed, "logits_dtype": str(np.dtype(all_logits.dtype))})
    keys = preds.index * 1_000_003 + preds.view
    if len(np.unique(keys)) != len(keys):
        raise MetadataError("the loader yielded a (site, view) pair twice; predictions would double-count it")
    log.info("%d views of %d sites in %.1f s (%.1f views/s)", len(preds), len(np.unique(preds.index)), elapsed,
             len(preds) / max(elapsed, 1e-9))
    return preds


def predict(checkpoint: str | Path, store: Any, *, datasets: Sequence[str] | str = ("test",),
            experiments: Sequence[str] | None = None, tta: str = "grid9", dihedral: bool = False,
            batch_size: int = 64, backend: str | None = None, device: str | None = None,
            crop_size: int | None = None, controls: bool = False, num_workers: int | None = None,
            adabn: bool = False, progress: bool = True, out: str | Path | None = None,
            half: bool | None = None) -> Predictions:
    """Per-view logits of one checkpoint over `datasets` (splits: "train", "test", ...; or "validation" = the
    checkpoint's own held-out experiments, of the layout's labelled splits). The crop size and normalisation come from the checkpoint's config unless given.
    Controls are skipped by default (their labels are known); `controls=True` predicts them too. With `out` the
    logits stream to `out`'s `.logits.npy` sidecar (float16 with `half`; `half=None`: when float32 would pass
    1 GiB); without, they stay in memory."""
    import torch

    import cellio
    from trainer.training.checkpoint import load_for_inference

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, class_map = load_for_inference(checkpoint, dev)
    st = cellio.open_store(store) if isinstance(store, (str, Path)) else store
    ds = (datasets,) if isinstance(datasets, str) else tuple(datasets)
    if "validation" in ds:
        if len(ds) != 1 or experiments is not None:
            raise ConfigError("datasets='validation' selects the checkpoint's held-out experiments; do not combine "
                              "it with other datasets or explicit experiments")
        experiments = validation_experiments(cfg, st.sites)
        if not experiments:  # an empty selection would mean "no filter" further down
            raise ConfigError(f"{checkpoint}: its run held out no experiment (data.val_fold={cfg.data.val_fold}"
                              f"{', cell types ' + str(cfg.data.cell_types) if cfg.data.cell_types else ''}), "
                              "so it has no out-of-fold predictions to give")
        from trainer.training.layout import labelled_splits, layout_of

        ds = labelled_splits(layout_of(st.sites))
        log.info("validation experiments of %s: %s", checkpoint, experiments)
    preds = predict_views(model, cfg, class_map, st, datasets=ds, experiments=experiments, tta=tta,
                          dihedral=dihedral, batch_size=batch_size, backend=backend, device=dev, crop_size=crop_size,
                          controls=controls, num_workers=num_workers, adabn=adabn, progress=progress,
                          desc=f"predict {Path(checkpoint).name}",
                          logits_out=None if out is None else logits_path(out), half=half)
    named = {} if class_map.names is None else {"class_names": list(class_map.names),  # named labels: raw id i is
                                                "class_columns": list(class_map.columns)}  # class_names[i]
    preds = Predictions(preds.logits, preds.index, preds.view, preds.classes,
                        {"checkpoint": str(checkpoint), **preds.meta, **named})
    if out is not None:
        preds.save(out)
    return preds


def logits_path(out: str | Path) -> Path:
    """The per-view logits file beside a predictions .npz: preds_test.npz -> preds_test.logits.npy."""
    out = Path(out)
    return out.with_name(f"{out.stem}.logits.npy")


def _numbered(out: Path, i: int, n: int) -> Path:
    return out if n == 1 else out.with_name(f"{out.stem}.{i}{out.suffix or '.npz'}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.infer.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint .pt; repeat for several")
    p.add_argument("--store", required=True, help="cellio Zarr store")
    p.add_argument("--datasets", nargs="+", default=["test"], help="train | test | validation (held-out folds)")
    p.add_argument("--experiments", nargs="+", help="only these experiments")
    p.add_argument("--tta", default="grid9", choices=["center", "grid9", "full"])
    p.add_argument("--dihedral", action="store_true", help="times the 8 dihedral views")
    p.add_argument("--crop-size", type=int, help="default: the checkpoint's data.val_crop_size or crop_size")
    p.add_argument("--controls", action="store_true", help="also predict control wells")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", choices=["torch", "dali"])
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, help="loader workers (default: the checkpoint's data.num_workers)")
    p.add_argument("--half", action="store_true", default=None,
                   help="store logits as float16 (default: when float32 would pass 1 GiB)")
    p.add_argument("--adabn", action="store_true", help="BatchNorm statistics recomputed on each plate")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output .npz (numbered when several checkpoints)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    for i, ckpt in enumerate(args.checkpoint):
        path = _numbered(out, i, len(args.checkpoint))
        preds = predict(ckpt, args.store, datasets=args.datasets, experiments=args.experiments, tta=args.tta,
                        dihedral=args.dihedral, batch_size=args.batch_size, backend=args.backend,
                        device=args.device, crop_size=args.crop_size, controls=args.controls,
                        num_workers=args.workers, adabn=args.adabn, progress=not args.no_progress, out=path,
                        half=args.half)
        print(f"{ckpt}: {len(preds)} views x {len(preds.classes)} classes -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
