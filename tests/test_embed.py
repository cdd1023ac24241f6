"""trainer.infer.embed: per-plate centring, per-cell-type class centres, the embeddings files and the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.infer.embed import (WellEmbeddings, centre_per_plate, centroid_scores, main, within_class_whitening,
                           write_embeddings)


def _table(n_classes=6, cell_types=("HUVEC", "RPE"), experiments=3):
    rows = []
    for ct in cell_types:
        for e in range(1, experiments + 1):
            for plate in (1, 2):
                for c in range(n_classes):
                    rows.append({"id_code": f"{ct}-0{e}_{plate}_W{c:02d}", "dataset": "train" if e < experiments
                                 else "test", "experiment": f"{ct}-0{e}", "cell_type": ct, "plate": plate,
                                 "well": f"W{c:02d}", "well_type": "treatment", "sirna": c, "site": 1})
    return pd.DataFrame(rows).astype({"sirna": "Int64"})


def _test_accuracy(emb, sites, **kwargs):
    """Top-1 accuracy of the test wells' centroid scores (centres from the train wells) against their labels."""
    ws = centroid_scores(emb, sites, reference=sites.loc[sites["dataset"] == "train", "id_code"],
                         targets=sites.loc[sites["dataset"] == "test", "id_code"], **kwargs)
    truth = sites.set_index("id_code").loc[ws.id_codes, "sirna"].to_numpy()
    return float((ws.classes[ws.scores.argmax(1)] == truth).mean())


def test_centroids_classify_cell_type_specific_phenotypes_under_plate_effects():
    sites = _table()
    rng = np.random.default_rng(0)
    dim = 16
    huvec = rng.normal(size=(6, dim))
    proto = {"HUVEC": huvec, "RPE": np.roll(huvec, 1, axis=0)}  # in RPE class c looks like HUVEC's class c - 1
    plate_shift = {k: rng.normal(scale=8.0, size=dim) for k in sites[["experiment", "plate"]].itertuples(index=False)}
    vec = np.stack([proto[r.cell_type][r.sirna] + plate_shift[(r.experiment, r.plate)] + rng.normal(scale=0.3, size=dim)
                    for r in sites.itertuples()]).astype(np.float32)
    emb = WellEmbeddings(sites["id_code"].to_numpy(dtype=object), vec)

    def accuracy(**kwargs):
        return _test_accuracy(emb, sites, **kwargs)

    assert accuracy() == 1.0
    # centres over both cell types mix class c of RPE with class c - 1 of HUVEC
    assert accuracy(per_cell_type=False) <= 0.6
    x = centre_per_plate(emb, sites)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


def test_whitening_finds_classes_hidden_under_large_correlated_well_variation():
    # wells vary 3x more along two random directions than any class differs: plain cosine is dominated by them,
    # the within-class covariance knows them and whitening discounts them
    sites = _table(n_classes=8, experiments=6)
    rng = np.random.default_rng(3)
    dim = 12
    proto = rng.normal(scale=0.5, size=(8, dim))
    nuisance = rng.normal(size=(2, dim))
    vec = np.stack([proto[r.sirna] + rng.normal(scale=1.5, size=2) @ nuisance + rng.normal(scale=0.2, size=dim)
                    for r in sites.itertuples()]).astype(np.float32)
    emb = WellEmbeddings(sites["id_code"].to_numpy(dtype=object), vec)
    whitened, cosine = _test_accuracy(emb, sites), _test_accuracy(emb, sites, whiten=False)
    assert whitened >= 0.9 and cosine <= 0.6, (whitened, cosine)


def test_whitening_needs_two_wells_of_a_class():
    x = np.random.default_rng(0).normal(size=(6, 4))
    assert within_class_whitening(x, np.arange(6), np.zeros(6)) is None  # every class once: nothing to estimate
    w = within_class_whitening(x, np.array([0, 0, 0, 1, 1, 1]), np.zeros(6))
    assert w.shape == (4, 4)
    np.testing.assert_allclose(w, w.T, atol=1e-10)


def test_embeddings_files_keep_the_wells_metadata(tmp_path):
    sites = _table(n_classes=3, experiments=2)
    emb = WellEmbeddings(sites["id_code"].to_numpy(dtype=object), np.arange(len(sites) * 4, dtype=np.float32)
                         .reshape(-1, 4))
    frame = pd.read_parquet(write_embeddings(emb, sites, tmp_path / "e.parquet"))
    assert frame["id_code"].tolist() == sites["id_code"].tolist() and list(frame.columns[-4:]) == ["f0", "f1",
                                                                                                    "f2", "f3"]
    np.testing.assert_array_equal(frame[["f0", "f1", "f2", "f3"]].to_numpy(), emb.vectors)
    import zarr

    group = zarr.open_group(str(write_embeddings(emb, sites, tmp_path / "e.zarr")), mode="r")
    np.testing.assert_array_equal(group["vectors"][:], emb.vectors)
    assert group["experiment"][:].tolist() == sites["experiment"].tolist()
    with pytest.raises(Exception, match="parquet or .zarr"):
        write_embeddings(emb, sites, tmp_path / "e.csv")


def test_the_cli_writes_well_and_site_embeddings(tmp_path):
    from cellio.testing import make_store
    from trainer.training.checkpoint import save_checkpoint
    from trainer.training.config import load_config
    from trainer.training.labels import ClassMap
    from trainer.training.models import create_model

    store = make_store(tmp_path / "s.zarr", size=(40, 40), classes=8)
    cfg = load_config(None, [f"data.store={store.path}", "data.crop_size=32", "data.num_workers=0",
                             "data.backend=torch"])
    class_map = ClassMap.from_sites(store.sites, include_controls=True)
    torch.manual_seed(0)
    model = create_model("densenet_tiny", num_classes=len(class_map), in_chans=6, num_cell_types=4)
    ckpt = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                              "classes": class_map.to_dict()})
    assert main(["--checkpoint", str(ckpt), "--store", str(store.path), "--out", str(tmp_path / "w.parquet"),
                 "--device", "cpu"]) == 0
    wells = pd.read_parquet(tmp_path / "w.parquet")
    assert len(wells) == store.sites["id_code"].nunique() and wells["id_code"].is_unique
    assert main(["--checkpoint", str(ckpt), "--store", str(store.path), "--out", str(tmp_path / "s.parquet"),
                 "--level", "site", "--device", "cpu"]) == 0
    per_site = pd.read_parquet(tmp_path / "s.parquet")
    assert len(per_site) == len(store.sites) and {"row", "site", "f0"} <= set(per_site.columns)


def _tiny_checkpoint(tmp_path, name="densenet_tiny", seed=0):
    from cellio.testing import make_store
    from trainer.training.checkpoint import save_checkpoint
    from trainer.training.config import load_config
    from trainer.training.labels import ClassMap
    from trainer.training.models import create_model

    store = make_store(tmp_path / "s.zarr", size=(40, 40), classes=8)
    cfg = load_config(None, [f"data.store={store.path}", "data.crop_size=32", "data.num_workers=0",
                             "data.backend=torch", f"model.name={name}"])
    class_map = ClassMap.from_sites(store.sites, include_controls=True)
    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(class_map), in_chans=6, num_cell_types=4)
    ckpt = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                              "classes": class_map.to_dict()})
    return store, ckpt


def test_the_penultimate_layer_is_the_spatial_mean_of_the_stage_before_the_last(tmp_path):
    """layer="penultimate" (the maps' default) = the mean over the map of DenseNet's second-to-last dense block,
    recomputed here by running the trunk's modules one by one on the loader's images; "final" stays the head's
    input."""
    import cellio
    from trainer.infer.embed import site_embeddings
    from trainer.training.checkpoint import load_for_inference

    store, ckpt = _tiny_checkpoint(tmp_path)
    model, cfg, _ = load_for_inference(ckpt, "cpu")
    rows, pen = site_embeddings(model, cfg, store, datasets=None, indices=[0, 3, 5], tta="center", layer="penultimate")
    _, final = site_embeddings(model, cfg, store, datasets=None, indices=[0, 3, 5], tta="center")
    assert pen.shape == (3, 40 + 4 * 12)  # transition1 halves 80 to 40, block 2 adds 4 layers of 12
    assert final.shape == (3, model.num_features) == (3, 92)
    loader = cellio.create_loader(store, 8, train=False, augment=cfg.data.augment, crop_size=cfg.data.crop_size,
                                  normalize=cfg.data.normalize, backend="torch", device="cpu", num_workers=0,
                                  datasets=None, indices=[0, 3, 5], controls=True, rank=0, world_size=1, tta="center")
    batch = next(iter(loader))
    x = batch["image"].float()
    with torch.inference_mode():
        for name, module in model.features.named_children():
            x = module(x)
            if name == "denseblock2":
                break
    order = np.argsort(batch["index"].numpy())
    np.testing.assert_allclose(pen[np.argsort(rows)], x.mean(dim=(2, 3)).numpy()[order], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, width", [("perchannel_tiny", 6 * 88), ("timm:resnet18", 256)])
def test_the_penultimate_layer_of_per_channel_and_timm_models(name, width):
    from trainer.infer.embed import _StageTap, stage_for_layer
    from trainer.training.models import create_model, feature_stages

    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=6, num_cell_types=2).eval()
    stages = feature_stages(model)
    assert len(stages) >= 3
    tap = _StageTap(stage_for_layer(model, "penultimate"))
    with torch.inference_mode():
        model.forward_features(torch.randn(2, 6, 64, 64))
    assert tap.take().shape == (2, width)
    tap.close()
    assert not tap.pooled and all(not s[0]._forward_hooks for s in stages)


def test_a_model_without_stages_refuses_the_penultimate_layer_by_name():
    from cellio.errors import ConfigError as CellioConfigError
    from trainer.infer.embed import stage_for_layer
    from trainer.training.models import create_model

    model = create_model("convnet_micro", num_classes=3, in_chans=6, num_cell_types=1)
    with pytest.raises(CellioConfigError, match="penultimate.*ConvNetMicro.*use layer 'final'"):
        stage_for_layer(model, "penultimate")
    with pytest.raises(CellioConfigError, match="embedding layer 'middle'.*final, penultimate"):
        stage_for_layer(model, "middle")


def test_initial_weights_give_the_untrained_model_seeded(tmp_path):
    """load_for_inference(initial_weights=SEED): the checkpoint's model freshly initialised — never its trained
    weights, the same for the same seed; the CLI embeds with it (the untrained-network ablation of docs/maps.md)."""
    from trainer.training.checkpoint import load_for_inference

    store, ckpt = _tiny_checkpoint(tmp_path, seed=7)
    trained = load_for_inference(ckpt, "cpu")[0].state_dict()
    a = load_for_inference(ckpt, "cpu", initial_weights=0)[0].state_dict()
    b = load_for_inference(ckpt, "cpu", initial_weights=0)[0].state_dict()
    key = "features.conv0.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], trained[key])
    out = tmp_path / "w.parquet"
    assert main(["--checkpoint", str(ckpt), "--store", str(store.path), "--out", str(out), "--device", "cpu",
                 "--layer", "penultimate", "--initial-weights", "0"]) == 0
    assert sum(c.startswith("f") and c[1:].isdigit() for c in pd.read_parquet(out).columns) == 88
