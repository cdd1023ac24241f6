"""The main job's inference inputs: every checkpoint's predictions (the plan's TTA) and well embeddings, each
cached in OUT/predictions beside the checkpoint it came from (a rerun reuses them; a retrained model never reuses
another model's), and the per-cell-type fine-tuned models joined into one ensemble member.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.infer.chain import Meter, no_meter
from trainer.infer.embed import WellEmbeddings, extract_embeddings
from trainer.infer.predict import Predictions, concat_predictions, load_predictions, predict
from trainer.job.plan import Plan
from trainer.training.checkpoint import load_for_inference

__all__ = ["predict_and_embed", "predict_and_embed_finetuned"]

log = logging.getLogger(__name__)


def _cached_predictions(ckpt: Path, plan: Plan, store: Any, ds: str, file: Path, meter: Meter, name: str
                        ) -> Predictions:
    """One checkpoint's predictions of `ds` at the plan's TTA, from `file` when it holds this checkpoint's."""
    if file.is_file() and load_predictions(file).meta.get("checkpoint") == str(ckpt):
        return load_predictions(file)
    with meter(name):
        preds = predict(ckpt, store, datasets=ds, tta=plan.eval_tta, dihedral=plan.dihedral, adabn=plan.adabn,
                        device=plan.torch_device(), batch_size=plan.batch, out=file)
    rate = len(preds) / max(preds.meta.get("seconds", 0.0), 1e-9)
    log.info("%s: %d views (%s) at %.0f views/s -> %s", ds, len(preds), plan.eval_tta, rate, file)
    return preds


def _cached_embeddings(ckpt: Path, plan: Plan, store: Any, file: Path, meter: Meter, name: str,
                       datasets: tuple[str, ...] = ("train", "test")) -> WellEmbeddings:
    """Every well's embedding of `datasets` (the plan's `embed_tta` views) under one checkpoint (its cell types
    only), from `file` when it holds this checkpoint's at these views (as `_cached_predictions`: a retrained model
    must not reuse an earlier model's file)."""
    if file.is_file():
        with np.load(file, allow_pickle=False) as z:
            if "checkpoint" in z.files and str(z["checkpoint"]) == str(ckpt) and "tta" in z.files \
                    and str(z["tta"]) == plan.embed_tta:
                return WellEmbeddings(z["id_codes"].astype(object), z["vectors"])
    model, cfg, _ = load_for_inference(ckpt, plan.torch_device())
    t0 = time.perf_counter()
    with meter(name):
        # whole sites are ~5x a crop's pixels: a quarter of the batch keeps the activations' memory the same
        batch = max(1, plan.batch // 4) if plan.embed_tta == "full" else plan.batch
        emb = extract_embeddings(model, cfg, store, datasets=datasets, tta=plan.embed_tta, batch_size=batch)
        np.savez(file, id_codes=emb.id_codes.astype(str), vectors=emb.vectors, checkpoint=np.array(str(ckpt)),
                 tta=np.array(plan.embed_tta))
    log.info("embeddings of %d wells in %.1f s -> %s", len(emb), time.perf_counter() - t0, file)
    return emb


def predict_and_embed(val_ckpt: Path, test_ckpt: Path, plan: Plan, store: Any, out: Path,
                      meter: Meter = no_meter) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Out-of-fold predictions by `val_ckpt` and test predictions by `test_ckpt` at the plan's TTA; every well's
    embedding (`embed_tta` views) by `test_ckpt`, and, when the two differ (a refit), the train wells' by
    `val_ckpt` for the out-of-fold centroids: (validation, test, embeddings, validation embeddings); cached."""
    kinds = ("validation", "test") if plan.val_fold >= 0 else ("test",)
    preds = {ds: _cached_predictions(val_ckpt if ds == "validation" else test_ckpt, plan, store, ds,
                                     out / "predictions" / f"model_{ds}.npz", meter, f"predict: {ds}") for ds in kinds}
    emb = _cached_embeddings(test_ckpt, plan, store, out / "predictions" / "embeddings.npz", meter, "embeddings")
    val_emb = emb
    if val_ckpt != test_ckpt and "validation" in preds:
        val_emb = _cached_embeddings(val_ckpt, plan, store, out / "predictions" / "embeddings_validation.npz", meter,
                                     "embeddings: train wells, before the refit", datasets=("train",))
    return [preds["validation"]] if "validation" in preds else [], [preds["test"]], [emb], [val_emb]


def predict_and_embed_finetuned(ckpts: dict[str, Path], joint: tuple[list[Any], list[Any], list[Any]], plan: Plan,
                                store: Any, out: Path, meter: Meter = no_meter
                                ) -> tuple[list[Any], list[Any], list[Any]]:
    """The per-cell-type fine-tuned models as one ensemble member: each cell type's sites predicted and embedded
    by its own model (a cell type without one keeps the joint model's rows), joined into one Predictions per split
    and one WellEmbeddings, in the shape of `predict_and_embed`'s first three."""
    pred_dir = out / "predictions"
    cell_type = store.sites["cell_type"].to_numpy()
    wells = store.sites.drop_duplicates("id_code").set_index("id_code")["cell_type"]
    joint_val, joint_test, joint_emb = joint
    splits = ([("validation", joint_val[0])] if joint_val else []) + [("test", joint_test[0])]
    members: dict[str, Any] = {}
    for ds, joint_preds in splits:
        parts = []
        for ct in sorted(set(cell_type[joint_preds.index])):
            ckpt = ckpts.get(ct)
            held = ckpt is not None and json.loads((ckpt.parents[1] / "folds.json").read_text())["val"]
            if ckpt is not None and (ds == "test" or held):
                parts.append(_cached_predictions(ckpt, plan, store, ds, pred_dir / f"finetune_{ct}_{ds}.npz", meter,
                                                 f"predict: {ds}, fine-tuned {ct}"))
            else:  # no fine-tuned model for these sites: the joint model's views
                parts.append(joint_preds.rows(cell_type[joint_preds.index] == ct))
        file = pred_dir / f"finetune_{ds}.npz"
        sources = [p.meta.get("checkpoint", "joint") for p in parts]
        if file.is_file() and [p.get("checkpoint", "joint") for p in
                               load_predictions(file).meta.get("parts", [])] == sources:
            members[ds] = load_predictions(file)
        else:
            members[ds] = concat_predictions(parts, out=file)
    emb_parts = []
    for ct in sorted(set(wells)):
        if ct in ckpts:
            emb_parts.append(_cached_embeddings(ckpts[ct], plan, store, pred_dir / f"finetune_{ct}_embeddings.npz",
                                                meter, f"embeddings, fine-tuned {ct}"))
        else:
            ids = [w for w in joint_emb[0].id_codes if wells.get(w) == ct]
            emb_parts.append(joint_emb[0].select(ids))
    emb = WellEmbeddings.concat(emb_parts)
    return ([members["validation"]] if "validation" in members else [], [members["test"]], [emb])
