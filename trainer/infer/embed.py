"""Embeddings: a model's pooled features per site and per well, centred per plate, and classification by cosine
similarity to class centres (the 2nd place's single model).

A well's embedding is the mean of `forward_features` over its views and sites. Subtracting each plate's mean
embedding (and dividing by its spread) removes what the plate adds to every well; what is left is compared, by
cosine, with the centre of each class's labelled wells. Centres are per cell type where that cell type has the
class (the same siRNA looks different in different cell types), else over all cell types. With `whiten` (the
default) the centred embeddings are first whitened by the reference wells' pooled within-class covariance
(Ledoit-Wolf shrinkage): the cosine then weighs a direction by how little it varies between wells of one class,
not by how much it varies overall (nearest class mean under a shared covariance, as in LDA). On a foreign
subtle set this raised held-out accuracy after plate assignment from 0.688 to 0.777 (docs/training.md).

    emb = extract_embeddings(model, cfg, store, datasets=("train", "test"))      # WellEmbeddings
    scores = centroid_scores(emb, store.sites, reference=train_wells, targets=test_wells)   # WellScores

    python -m trainer.infer.embed --checkpoint runs/a/checkpoints/last.pt --store rxrx1.zarr --out emb.parquet \\
        [--level well|site] [--tta center|grid9|full]       # .parquet or .zarr, with the wells' metadata
        [--layer final|penultimate] [--initial-weights SEED]
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError

from trainer.infer.aggregate import WellScores, group_views, well_mean
from trainer.training.disk import replaced_atomically
from trainer.training.layout import layout_of

__all__ = ["LAYERS", "META_COLUMNS", "meta_columns", "stage_for_layer", "WellEmbeddings", "extract_embeddings",
           "centre_per_plate", "within_class_whitening", "centroid_scores", "write_embeddings", "main"]

log = logging.getLogger(__name__)

# what an embedding pools: the head's input, or the stage before the last (docs/maps.md)
LAYERS = ("final", "penultimate")

# every well's metadata in the embeddings files; then its layout's well type, label and perturbation columns
META_COLUMNS = ("id_code", "dataset", "experiment", "cell_type", "plate", "well")


def meta_columns(sites: pd.DataFrame) -> tuple[str, ...]:
    """The metadata columns of an embeddings file (RxRx1: META_COLUMNS, well_type, sirna)."""
    p = layout_of(sites).perturbations
    return tuple(dict.fromkeys((*META_COLUMNS, p.well_type_column, p.label_column, *p.columns)))


@dataclass(frozen=True)
class WellEmbeddings:
    id_codes: np.ndarray    # (n,) sorted well ids
    vectors: np.ndarray     # (n, F) float32: mean over the well's sites and views

    def __len__(self) -> int:
        return len(self.id_codes)

    @classmethod
    def concat(cls, parts: Sequence["WellEmbeddings"]) -> "WellEmbeddings":
        """Embeddings of disjoint well sets (each cell type's fine-tuned model), sorted by well id."""
        ids = np.concatenate([p.id_codes.astype(object) for p in parts])
        if len(set(ids)) != len(ids):
            raise MetadataError("WellEmbeddings.concat: the parts share wells; they must be disjoint")
        order = np.argsort(ids.astype(str), kind="stable")
        return cls(ids[order], np.concatenate([p.vectors for p in parts])[order])

    def select(self, id_codes: Sequence[str]) -> "WellEmbeddings":
        pos = pd.Index(self.id_codes).get_indexer(pd.Index(id_codes))
        if (pos < 0).any():
            raise MetadataError(f"wells {list(np.asarray(id_codes)[pos < 0][:5])} have no embedding")
        return WellEmbeddings(np.asarray(id_codes, dtype=object), self.vectors[pos])


def _pool_map(fmap: Any) -> Any:
    """(B, C, H, W) feature maps -> (B, C) spatial means; (B, N, C) token sequences (a ViT block) -> token means."""
    return fmap.float().mean(dim=(2, 3)) if fmap.ndim == 4 else fmap.float().mean(dim=1)


def stage_for_layer(model: Any, layer: str) -> list[Any] | None:
    """The modules whose pooled outputs are the embedding for `layer` (None: `forward_features`, layer "final")."""
    from trainer.training.models import feature_stages

    if layer not in LAYERS:
        raise ConfigError(f"embedding layer {layer!r}: expected one of {', '.join(LAYERS)}")
    if layer == "final":
        return None
    stages = feature_stages(model)
    if len(stages) < 2:
        raise ConfigError(f"embedding layer {layer!r}: model {type(model).__name__} has {len(stages)} feature "
                          "stage(s) this code knows (DenseNets, per-channel DenseNets and timm models with "
                          "feature_info have several); use layer 'final'")
    return stages[-2]


class _StageTap:
    """Forward hooks that keep the pooled outputs of `modules` during one forward pass (`pool`: the model's own
    pooling of a token sequence, e.g. per channel for a channel-agnostic ViT; else `_pool_map`)."""

    def __init__(self, modules: Sequence[Any], pool: Any = None):
        pool = pool or _pool_map
        self.pooled: list[Any] = []
        self.handles = [m.register_forward_hook(lambda _m, _i, out: self.pooled.append(pool(out).float()))
                        for m in modules]

    def take(self) -> Any:
        """The batch's features: each pass's modules side by side, the passes (a model that encodes a batch in
        parts, trainer/training/mae.py's tiles) one after another."""
        import torch

        m = len(self.handles)
        parts = [torch.cat(self.pooled[i:i + m], dim=1) for i in range(0, len(self.pooled), m)]
        self.pooled = []
        return torch.cat(parts, dim=0)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def site_embeddings(model: Any, cfg: Any, store: Any, *, datasets: Sequence[str] | None = ("train", "test"),
                    indices: Sequence[int] | None = None, tta: str = "center", batch_size: int = 64,
                    device: Any = None, progress: bool = False, layer: str = "final") -> tuple[np.ndarray, np.ndarray]:
    """(store rows, features) per view, controls included (only the model's own cell types when it trained on
    some: data.cell_types). `layer` "final": `model.forward_features` (what the head classifies); "penultimate":
    the spatially averaged output of the stage before the last (docs/maps.md compares the two for maps)."""
    import torch
    from tqdm.auto import tqdm

    import cellio
    from trainer.training.runtime import in_model_layout

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    loader = cellio.create_loader(store, batch_size, train=False, augment=cfg.data.augment,
                                  crop_size=cfg.data.val_crop_size or cfg.data.crop_size,
                                  normalize=cfg.data.normalize, backend=cfg.data.backend,
                                  device="cuda" if dev.type == "cuda" else "cpu", num_workers=cfg.data.num_workers,
                                  datasets=datasets, indices=indices, cell_types=cfg.data.cell_types or None,
                                  controls=True, rank=0, world_size=1, tta=tta)
    stage = stage_for_layer(model, layer)
    tap = _StageTap(stage, getattr(model, "pool_tokens", None)) if stage is not None else None
    rows, feats = [], []
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, total=len(loader), desc="embeddings", disable=not progress):
                x = in_model_layout(batch["image"].to(dev), model)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    f = model.forward_features(x.float() if dev.type != "cuda" else x, batch["cell_type"].to(dev))
                if tap is not None:
                    f = tap.take()
                feats.append(f.float().cpu().numpy())
                rows.append(batch["index"].numpy())
    finally:
        if tap is not None:
            tap.close()
    return np.concatenate(rows), np.concatenate(feats)


def extract_embeddings(model: Any, cfg: Any, store: Any, **kwargs: Any) -> WellEmbeddings:
    """Per-well mean embeddings (site_embeddings' keywords)."""
    rows, feats = site_embeddings(model, cfg, store, **kwargs)
    g = group_views(rows, store.sites)
    return WellEmbeddings(g.id_codes, well_mean(feats, g))


def centre_per_plate(emb: WellEmbeddings, sites: pd.DataFrame, *, scale: bool = True) -> np.ndarray:
    """Each plate's wells minus the plate's mean embedding (divided by its per-feature spread with `scale`),
    then L2-normalised: (n, F)."""
    meta = sites.drop_duplicates("id_code").set_index("id_code").loc[emb.id_codes]
    plate = (meta["experiment"].astype(str) + "/" + meta["plate"].astype(str)).to_numpy()
    x = emb.vectors.astype(np.float64).copy()
    for p in np.unique(plate):
        m = plate == p
        x[m] -= x[m].mean(axis=0)
        if scale and m.sum() > 1:
            x[m] /= x[m].std(axis=0) + 1e-6
    return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


def within_class_whitening(x: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray | None:
    """The (F, F) matrix that whitens the pooled within-class covariance of the rows `x` (each class's rows
    within one group, e.g. one cell type, deviate from their own mean), Ledoit-Wolf shrunk so that a few hundred
    wells suffice for ~100 features; None when no class has two rows in a group (nothing to estimate from)."""
    from sklearn.covariance import LedoitWolf

    key = pd.Series(labels.astype(str)).str.cat(pd.Series(groups.astype(str)), sep="/").to_numpy()
    size = pd.Series(key).map(pd.Series(key).value_counts()).to_numpy()
    keep = size > 1
    if keep.sum() < 2:
        return None
    res = x - pd.DataFrame(x).groupby(key).transform("mean").to_numpy()
    # a deviation from a mean of n rows has variance (n-1)/n of the row's: rescale to the rows' own
    res = res[keep] * np.sqrt(size[keep] / (size[keep] - 1))[:, None]
    cov = LedoitWolf(assume_centered=True).fit(res).covariance_
    w, v = np.linalg.eigh(cov)
    return (v / np.sqrt(np.maximum(w, 1e-12 * max(w.max(), 1e-12)))) @ v.T


def centroid_scores(emb: WellEmbeddings, sites: pd.DataFrame, *, reference: Sequence[str],
                    targets: Sequence[str], per_cell_type: bool = True, whiten: bool = True) -> WellScores:
    """Cosine similarity of each target well to the centre of each class's reference wells (their labels come
    from `sites`; treatment wells only), after per-plate centring and (`whiten`) whitening by the reference
    wells' within-class covariance (per cell type and class). Kind "logits": calibrate the scale with
    trainer.infer.calibrate before combining it with other scores."""
    x = pd.DataFrame(centre_per_plate(emb, sites), index=emb.id_codes)
    meta = sites.drop_duplicates("id_code").set_index("id_code")
    ref = meta.loc[list(reference)]
    ref = ref[(ref["well_type"] == "treatment") & ref["sirna"].notna()]
    if ref.empty:
        raise ConfigError("centroid_scores: no labelled treatment well among the reference wells")
    labels = ref["sirna"].astype(np.int64)
    classes = np.unique(labels.to_numpy())
    if whiten:
        w = within_class_whitening(x.loc[ref.index].to_numpy(np.float64), labels.to_numpy(),
                                   ref["cell_type"].to_numpy())
        if w is not None:
            z = x.to_numpy(np.float64) @ w
            x = pd.DataFrame(z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12), index=x.index)
    xr = x.loc[ref.index].to_numpy()
    onehot = (labels.to_numpy()[:, None] == classes[None, :]).astype(np.float64)

    def centres(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = onehot[mask].sum(axis=0)
        c = onehot[mask].T @ xr[mask]
        return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-12), counts > 0

    overall, _ = centres(np.ones(len(ref), bool))
    tmeta = meta.loc[list(targets)]
    xt = x.loc[tmeta.index].to_numpy()
    scores = xt @ overall.T
    if per_cell_type:
        for ct in np.unique(tmeta["cell_type"]):
            c, has = centres((ref["cell_type"] == ct).to_numpy())
            rows = (tmeta["cell_type"] == ct).to_numpy()
            scores[np.ix_(rows, has)] = xt[rows] @ c[has].T
    return WellScores(tmeta.index.to_numpy(dtype=object), scores.astype(np.float32), classes, "logits")


def write_embeddings(emb: WellEmbeddings, sites: pd.DataFrame, path: str | Path) -> Path:
    """Embeddings with their wells' metadata: `.parquet` (one column per feature, f0..) or `.zarr` (a group with
    `vectors` (n, F) and one array per metadata column)."""
    path = Path(path)
    meta = sites.drop_duplicates("id_code").set_index("id_code").loc[emb.id_codes].reset_index()
    meta = meta[[c for c in meta_columns(sites) if c in meta.columns]]
    if path.suffix == ".parquet":
        frame = pd.concat([meta, pd.DataFrame(emb.vectors, columns=[f"f{i}" for i in range(emb.vectors.shape[1])])],
                          axis=1)
        with replaced_atomically(path) as tmp:
            frame.to_parquet(tmp, index=False)
        return path
    if path.suffix == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="w")
        group.create_array("vectors", data=emb.vectors)
        for col in meta.columns:
            values = meta[col]
            if isinstance(values.dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_integer_dtype(values):
                data = values.astype("float64").to_numpy()  # a nullable label (RxRx1's sirna): NaN where hidden
            elif pd.api.types.is_numeric_dtype(values):
                data = values.to_numpy()
            else:
                data = np.asarray(values.astype(str).tolist(), dtype="U")
            group.create_array(col, data=data)
        group.attrs.update({"columns": list(meta.columns), "level": "well"})
        return path
    raise ConfigError(f"--out {path}: expected a .parquet or .zarr path")


def main(argv: Sequence[str] | None = None) -> int:
    import cellio
    from trainer.training.checkpoint import load_for_inference

    p = argparse.ArgumentParser(prog="python -m trainer.infer.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="output .parquet or .zarr")
    p.add_argument("--datasets", nargs="+", help="the splits to embed (default: every split the store has)")
    p.add_argument("--tta", default="center", choices=["center", "grid9", "full"])
    p.add_argument("--level", default="well", choices=["well", "site"])
    p.add_argument("--layer", default="final", choices=list(LAYERS),
                   help="final: the head's input; penultimate: the stage before the last (docs/maps.md)")
    p.add_argument("--initial-weights", type=int, metavar="SEED",
                   help="embed with the checkpoint's model freshly initialised (seeded), not its trained weights: "
                        "the untrained-network ablation")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, _ = load_for_inference(args.checkpoint, dev, initial_weights=args.initial_weights)
    store = cellio.open_store(args.store)
    rows, feats = site_embeddings(model, cfg, store, datasets=args.datasets, tta=args.tta, progress=True,
                                  layer=args.layer)
    if args.level == "well":
        g = group_views(rows, store.sites)
        emb = WellEmbeddings(g.id_codes, well_mean(feats, g))
        write_embeddings(emb, store.sites, args.out)
    else:  # one row per site: the mean over the site's views, keyed by store row
        frame = pd.DataFrame(feats).groupby(rows).mean()
        sites = store.sites.iloc[frame.index].reset_index(names="row")
        meta = sites[["row", *[c for c in meta_columns(store.sites) if c in sites.columns], "site"]]
        out = pd.concat([meta, pd.DataFrame(frame.to_numpy(), columns=[f"f{i}" for i in range(feats.shape[1])])],
                        axis=1)
        if not str(args.out).endswith(".parquet"):
            raise ConfigError("--level site writes .parquet only")
        out.to_parquet(args.out, index=False)
    print(f"{len(np.unique(rows))} sites -> {args.out} ({args.level} level, {feats.shape[1]} features)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
