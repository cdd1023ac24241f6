"""The self-supervised model and stage (trainer/training/mae.py, trainer/training/stages/mae.py) and
plan.objective=mae: tokens and targets against hand-cut patches, the encoder learning from pixels only, exact
resume, embeddings from its checkpoint, and the plan's choices and refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellio.errors import ConfigError

from trainer.infer.embed import site_embeddings
from trainer.training.checkpoint import load_checkpoint, load_for_inference
from trainer.training.config import load_config
from trainer.training.loop import run
from trainer.training.mae import MaskedAutoencoderViT, sincos_2d
from trainer.training.models import create_model, feature_stages

BASE = ["data.crop_size=24", "data.batch_size=8", "data.num_workers=0", "data.backend=torch", "data.n_folds=2",
        "data.val_fold=0", "data.augment=d4_shift", "model.name=mae_vit_tiny", "optim.lr=1e-3",
        "optim.warmup_steps=2", "train.device=cpu", "train.num_threads=1", "train.progress=false",
        "train.tensorboard=false", "train.log_every=1", "train.stage=masked_autoencoding"]


@pytest.fixture(scope="module")
def mae_store(tmp_path_factory):
    """24x24 sites (3 x 3 patches), 4 treatment classes (+3 controls), one cell type x 2 train experiments."""
    from cellio.testing import make_store

    return make_store(tmp_path_factory.mktemp("mae") / "store.zarr", size=(24, 24), classes=4, cell_types=("HUVEC",),
                      train_experiments_per_cell_type=2)


def _model(in_chans: int = 3, **kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return create_model("mae_vit_tiny", num_classes=5, in_chans=in_chans, num_cell_types=1, **kw)


def _events(out: Path) -> list[dict]:
    return [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]


def test_sincos_position_embedding_is_distinct_per_patch_for_any_grid():
    pe = sincos_2d(3, 5, 16)
    assert pe.shape == (15, 16) and pe.abs().max() <= 1.0
    assert len({tuple(np.round(r, 6)) for r in pe.numpy()}) == 15
    torch.testing.assert_close(sincos_2d(7, 7, 16).reshape(7, 7, 16)[:3, :5].reshape(15, 16), pe)
    with pytest.raises(ConfigError, match="multiple of 4"):
        sincos_2d(2, 2, 18)


def test_tokens_and_targets_follow_the_patches_channel_by_channel():
    model = _model(in_chans=2)
    p = model.patch
    x = torch.randn(2, 2, 2 * p + 3, 3 * p)  # 3 rows cut: 2 x 3 patches per channel
    targets = model.patch_targets(x)
    assert targets.shape == (2, 2 * 2 * 3, p * p)
    # token k = channel k // 6, patch row (k % 6) // 3, patch column k % 3; its pixels normalised on their own
    k = 6 + 4                                     # channel 1, row 1, column 1
    patch = x[1, 1, p:2 * p, p:2 * p].flatten()
    torch.testing.assert_close(targets[1, k], (patch - patch.mean()) / (patch.var() + 1e-6).sqrt())
    tokens, grid = model.tokens(x)
    assert grid == (2, 3) and tokens.shape == (2, 12, model.width)
    # the same patch content in another channel embeds differently only by the channel embedding
    y = x.clone()
    y[:, 0] = y[:, 1]
    t, _ = model.tokens(y)
    torch.testing.assert_close(t[:, 6:] - t[:, :6], (model.channel_embed[1] - model.channel_embed[0]).expand(2, 6, -1))
    with pytest.raises(ConfigError, match="expected 2 input channels, found 3"):
        model.tokens(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="smaller than one"):
        model.tokens(torch.zeros(1, 2, 4, 16))


def test_tokens_are_pooled_per_channel_and_the_visible_ones_by_their_channel():
    model = _model(in_chans=2)
    enc = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)    # 2 channels x 3 tokens, width 4
    pooled = model.pool_tokens(enc)
    assert model.num_features == 2 * model.width and pooled.shape == (2, 8)
    torch.testing.assert_close(pooled[1, 4:], enc[1, 3:].mean(0))           # channel 1: tokens 3..5
    channel = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])       # sample 1 sees no token of channel 1
    visible = model.pool_tokens(enc, channel)
    torch.testing.assert_close(visible[0, :4], enc[0, :2].mean(0))
    torch.testing.assert_close(visible[1, 4:], torch.zeros(4))


def test_features_of_a_crop_and_of_a_whole_site_and_the_stages():
    model = _model().eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 3 * model.width)
        assert model.forward_features(torch.randn(1, 3, 70, 41)).shape == (1, model.num_features)
        assert model(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long)).shape == (2, 5)
    assert [len(s) for s in feature_stages(model)] == [1] * len(model.blocks)
    with pytest.raises(ConfigError, match="mask_ratio"):
        _model(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        _model(pretrained="weights.pth")


def test_the_encoder_learns_from_pixels_only_and_the_probe_from_detached_features():
    from trainer.training.stages.mae import _MaskedForward

    model = _model()
    net = _MaskedForward(model)
    reconstruction, logits = net(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))
    logits.sum().backward()                 # the probe's loss alone
    assert all(p.grad is None for p in model.blocks.parameters())
    assert model.embed.weight.grad is None and any(p.grad is not None for p in model.head.parameters())
    model.zero_grad(set_to_none=True)
    reconstruction.backward()               # the reconstruction reaches the encoder, never the head
    assert all(p.grad is not None for p in model.blocks.parameters())
    assert all(p.grad is None for p in model.head.parameters())


def test_reconstruction_improves_on_a_fixed_batch():
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same masks each step: the loss can only fall by learning
        loss, _ = model.masked_reconstruction(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_masked_autoencoding_stage_trains_resumes_exactly_and_embeds(mae_store, tmp_path):
    store = str(mae_store.path)
    common = ["train.max_steps=6", "data.val_fold=-1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(load_config(None, [*BASE, f"data.store={store}", f"out={straight}", *common]))
    b1 = run(load_config(None, [*BASE, f"data.store={store}", f"out={resumed}", *common, "train.stop_at_step=3"]))
    assert b1["stopped_early"]
    b2 = run(load_config(None, [*BASE, f"data.store={store}", f"out={resumed}", *common]))
    assert a["step"] == b2["step"] == 6
    assert [e["loss"] for e in _events(straight)] == [e["loss"] for e in _events(resumed)]
    wa = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    model, cfg, _ = load_for_inference(straight / "checkpoints" / "last.pt", "cpu")
    assert isinstance(model, MaskedAutoencoderViT)
    rows, feats = site_embeddings(model, cfg, mae_store, datasets=None, tta="full")
    assert feats.shape == (len(mae_store.sites), model.num_features) and np.isfinite(feats).all()
    _, pen = site_embeddings(model, cfg, mae_store, datasets=None, tta="full", layer="penultimate")
    assert pen.shape == feats.shape and not np.allclose(pen, feats)


def test_the_stage_refuses_a_model_without_masked_reconstruction(mae_store, tmp_path):
    cfg = load_config(None, [*BASE, f"data.store={mae_store.path}", f"out={tmp_path}", "model.name=densenet_tiny",
                             "train.max_steps=1"])
    with pytest.raises(ConfigError, match="masked_autoencoding trains a masked-autoencoder model"):
        run(cfg)


def test_plan_objective_mae_chooses_the_model_one_stage_and_the_trainer_stage():
    from trainer.job.plan import MAE_MAX_CROP, MAE_MODEL, DataFacts, Hardware, make_plan

    facts = DataFacts((512, 512), 1300, 440, 60, ("E0", "E1", "E2", "E3"), ("T1",), ("HUVEC",), 2.0)
    gpu = Hardware(16, (("H100", 80.0),), True)
    plan = make_plan(facts, gpu, 3600, {"objective": "mae"})
    assert (plan.model, plan.crop, plan.pseudo_share) == (MAE_MODEL, MAE_MAX_CROP, 0.0)
    cfg = plan.trainer_config(load_config(None, []))
    assert cfg.train.stage == "masked_autoencoding" and cfg.model.name == MAE_MODEL
    assert any("plan.objective=mae" in r for r in plan.reasons)
    classify = make_plan(facts, gpu, 3600, {})
    assert classify.trainer_config(load_config(None, [])).train.stage == "single"
    with pytest.raises(ConfigError, match="plan.steps_pseudo and plan.pseudo_share must be 0"):
        make_plan(facts, gpu, 3600, {"objective": "mae", "steps_pseudo": 10})
    with pytest.raises(ConfigError, match=r"plan.objective: expected one of \['classify', 'mae'\]"):
        make_plan(facts, gpu, 3600, {"objective": "simclr"})


def test_a_site_larger_than_a_tile_is_the_mean_of_its_tiles_and_its_stages_too():
    from trainer.infer.embed import _StageTap
    from trainer.training.mae import _starts

    assert _starts(40, 16) == [0, 12, 24] and _starts(32, 16) == [0, 16] and _starts(16, 16) == [0]
    model = _model(tile=16).eval()
    x = torch.randn(2, 3, 40, 32)                    # 3 x 2 tiles of 16 px, overlapping along the 40 px side
    with torch.no_grad():
        got = model.forward_features(x)
        by_hand = torch.stack([model.pool_tokens(model._encode(model.tokens(x[..., y:y + 16, c:c + 16])[0]))
                               for y in (0, 12, 24) for c in (0, 16)]).mean(0)
        torch.testing.assert_close(got, by_hand)
        assert model._tiles == 1
        tap = _StageTap(feature_stages(model)[-2], model.pool_tokens)
        try:
            model.forward_features(x)
            assert tap.take().shape == (2, 3 * model.width)
        finally:
            tap.close()
    torch.manual_seed(0)
    whole = create_model("mae_vit_tiny", num_classes=5, in_chans=3, num_cell_types=1, tile=None).eval()
    with torch.no_grad():
        assert not torch.allclose(whole.forward_features(x), got)
    with pytest.raises(ConfigError, match="smaller than one"):
        _model(tile=4)


def test_tiles_encoded_in_several_passes_give_the_same_features(monkeypatch):
    import trainer.training.mae as mae
    from trainer.infer.embed import _StageTap

    model = _model(tile=16).eval()
    x = torch.randn(3, 3, 32, 32)                    # 4 tiles an image, 3 channels x 2 x 2 tokens a tile
    with torch.no_grad():
        one = model.forward_features(x)
        monkeypatch.setattr(mae, "TILE_TOKENS_PER_PASS", 48)   # one image's 4 x 12 tokens a pass
        tap = _StageTap(feature_stages(model)[-2], model.pool_tokens)
        try:
            torch.testing.assert_close(model.forward_features(x), one)
            assert len(tap.pooled) == 3 and tap.take().shape == (3, 3 * model.width)
        finally:
            tap.close()
