"""trainer.training.models / labels / folds / losses: registry contract, stems, heads, pretrained loading."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cellio.errors import ConfigError
from trainer.training.folds import fold_experiments, make_folds
from trainer.training.labels import IGNORE_INDEX, ClassMap
from trainer.training.losses import create_loss
from trainer.training.models import ClassifierHead, adapt_input_conv, create_model, list_models

# odd, non-square; the DenseNet-121 family needs >= 32 px to keep a 1x1 map after its three transitions
SIZE = {"densenet_tiny": (33, 29), "perchannel_tiny": (33, 29)}
BIG = (33, 29)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box is shared: one thread beats two oversubscribed ones
    yield
    torch.set_num_threads(threads)


def test_registry_lists_the_families():
    names = list_models()
    for name in ("densenet121", "densenet161", "densenet201", "densenet_tiny", "perchannel_densenet121",
                 "perchannel_tiny"):
        assert name in names


@pytest.mark.parametrize("name", list_models())
def test_two_step_smoke(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=6, num_cell_types=4)
    h, w = SIZE.get(name, BIG)
    x = torch.randn(2, 6, h, w)
    ct = torch.tensor([0, 3])
    y = torch.tensor([1, 4])
    feats = model.forward_features(x, ct)
    assert feats.shape == (2, model.num_features)
    logits = model(x, ct)
    assert logits.shape == (2, 5)
    model.eval()
    torch.testing.assert_close(model(x, ct), model.forward_head(model.forward_features(x, ct), ct))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        if hasattr(model, "forward_channels"):  # per-channel stage 1 path too
            loss = F.cross_entropy(model.forward_channels(x).flatten(0, 1), y.repeat_interleave(6))
            loss = loss + F.cross_entropy(model(x, ct), y)
        else:
            loss = F.cross_entropy(model(x, ct), y)
        if hasattr(model, "masked_reconstruction"):  # the self-supervised objective trains its decoder
            loss = loss + model.masked_reconstruction(x)[0]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)


def test_perchannel_extractors_see_only_their_channel():
    torch.manual_seed(0)
    model = create_model("perchannel_tiny", num_classes=3, in_chans=6, num_cell_types=4,
                         intensity_stats=True).eval()
    x = torch.randn(2, 6, 33, 29)
    base = model.channel_features(x)
    x2 = x.clone()
    x2[:, 4] += 1.0
    moved = (model.channel_features(x2) - base).abs().amax(dim=(0, 2))
    assert moved[4] > 0 and torch.all(moved[[0, 1, 2, 3, 5]] == 0)
    feats = model.forward_features(x)
    assert feats.shape == (2, 6 * model.num_channel_features + 12)
    torch.testing.assert_close(feats[:, -12:-6], x.flatten(2).mean(-1))


def test_head_cell_type_onehot_and_per_cell_type_heads():
    torch.manual_seed(0)
    head = ClassifierHead(7, 4, num_cell_types=4, cell_type_input=True, per_cell_type=True, hidden=5).eval()
    feats = torch.randn(6, 7)
    ct = torch.tensor([0, 1, 2, 3, 2, 0])
    out = head(feats, ct)
    for i in range(6):
        inp = torch.cat([feats[i:i + 1], F.one_hot(ct[i:i + 1], 4).float()], 1)
        torch.testing.assert_close(out[i:i + 1], head.heads[int(ct[i])](inp))
    with pytest.raises(ConfigError, match="cell_type"):
        head(feats)
    # the one-hot really changes the answer
    shared = ClassifierHead(7, 4, num_cell_types=4, cell_type_input=True).eval()
    assert not torch.allclose(shared(feats, torch.zeros(6, dtype=torch.long)), shared(feats, torch.ones(6).long()))


@pytest.mark.parametrize("in_chans", [1, 3, 6, 12])
def test_adapt_input_conv_keeps_the_grey_response(in_chans):
    torch.manual_seed(0)
    rgb = torch.randn(8, 3, 7, 7)
    adapted = adapt_input_conv(in_chans, rgb)
    assert adapted.shape == (8, in_chans, 7, 7)
    grey = torch.rand(1, 1, 17, 11)
    ref = F.conv2d(grey.expand(-1, 3, -1, -1), rgb)
    torch.testing.assert_close(F.conv2d(grey.expand(-1, in_chans, -1, -1), adapted), ref, rtol=1e-5, atol=1e-5)
    if in_chans == 6:  # timm layout: RGB repeated, scaled by 3/6
        torch.testing.assert_close(adapted[:, 3:], rgb * 0.5)
    with pytest.raises(ConfigError, match="3 input channels"):
        adapt_input_conv(6, torch.randn(8, 4, 3, 3))


def _torchvision_tiny_state(old_keys: bool = False) -> dict[str, torch.Tensor]:
    from torchvision.models.densenet import DenseNet

    torch.manual_seed(1)
    state = DenseNet(growth_rate=12, block_config=(4, 4, 4), num_init_features=32, num_classes=1000).state_dict()
    if old_keys:  # the original torchvision .pth files spell 'norm.1' for 'norm1'
        state = {k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v
                 for k, v in state.items()}
    return state


@pytest.mark.parametrize("old_keys", [False, True])
def test_pretrained_from_a_local_file(tmp_path, old_keys):
    state = _torchvision_tiny_state(old_keys)
    path = tmp_path / "densenet_tiny.pth"
    torch.save(state, path)
    model = create_model("densenet_tiny", num_classes=5, in_chans=6, num_cell_types=4, pretrained=str(path))
    clean = _torchvision_tiny_state(False)
    own = model.features.state_dict()
    torch.testing.assert_close(own["conv0.weight"], adapt_input_conv(6, clean["features.conv0.weight"]))
    for key in ("denseblock1.denselayer1.norm1.weight", "denseblock3.denselayer4.conv2.weight", "norm5.bias"):
        torch.testing.assert_close(own[key], clean[f"features.{key}"])
    per = create_model("perchannel_tiny", num_classes=5, in_chans=6, num_cell_types=4, pretrained=str(path))
    torch.testing.assert_close(per.extractors[3].conv0.weight, clean["features.conv0.weight"].sum(1, keepdim=True))


def test_missing_pretrained_file_is_an_error_not_random_init(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.pretrained.*does not exist"):
        create_model("densenet_tiny", num_classes=5, in_chans=6, num_cell_types=4,
                     pretrained=str(tmp_path / "densenet121.pth"))


def test_pretrained_of_another_depth_is_rejected(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_torchvision_tiny_state(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        create_model("densenet121", num_classes=5, in_chans=6, num_cell_types=4, pretrained=str(path))


def test_unknown_model_and_kwargs():
    with pytest.raises(ConfigError, match="densenet_tiny"):
        create_model("resnet50", num_classes=5, in_chans=6, num_cell_types=4)
    with pytest.raises(ConfigError, match="model.kwargs"):
        create_model("densenet_tiny", num_classes=5, in_chans=6, num_cell_types=4, hiddn=3)


@pytest.mark.parametrize("name", ["densenet_tiny", "perchannel_tiny", "convnet_micro", "timm:resnet18"])
def test_models_take_the_datas_channels_and_cell_types(name):
    """Built for 3 channels and 2 cell types (a layout other than RxRx1's): the stem, the per-channel extractors
    and the head's cell-type input follow the data, and 6 channels are refused."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=3, num_cell_types=2).eval()
    x, ct = torch.randn(2, 3, 33, 29), torch.tensor([0, 1])
    assert model(x, ct).shape == (2, 5) and model.forward_features(x, ct).shape == (2, model.num_features)
    first = next(m for m in model.head.heads[0] if isinstance(m, torch.nn.Linear))
    assert first.in_features == model.num_features + 2  # the 2 cell types' one-hot
    if name == "perchannel_tiny":
        assert len(model.extractors) == 3 and model.num_features == 3 * model.num_channel_features + 6
    with pytest.raises((ConfigError, RuntimeError)):
        model(torch.randn(2, 6, 33, 29), ct)


def test_a_timm_backbone_loads_local_weights_with_its_stem_adapted(tmp_path, monkeypatch):
    import timm
    from timm.models import adapt_input_conv as timm_adapt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local file only: any hub access would fail here
    torch.manual_seed(3)
    imagenet = timm.create_model("resnet18", pretrained=False, num_classes=1000)  # RGB, its own classifier
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("timm:resnet18", num_classes=7, in_chans=5, num_cell_types=3, pretrained=str(path))
    own, src = model.backbone.state_dict(), imagenet.state_dict()
    torch.testing.assert_close(own["conv1.weight"], timm_adapt(5, src["conv1.weight"]))
    torch.testing.assert_close(own["layer3.1.conv2.weight"], src["layer3.1.conv2.weight"])
    assert "fc.weight" not in own and model.num_features == 512  # the ImageNet classifier is dropped
    x, ct = torch.randn(2, 5, 35, 31), torch.tensor([2, 0])
    assert model.eval()(x, ct).shape == (2, 7)
    with pytest.raises(ConfigError, match=r"model\.pretrained.*does not exist"):
        create_model("timm:resnet18", num_classes=7, in_chans=5, num_cell_types=3, pretrained=str(tmp_path / "x"))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="cannot build it with weights"):
        create_model("timm:resnet18", num_classes=7, in_chans=5, num_cell_types=3,
                     pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match=r"timm has no model 'resnet181'.*timm:resnet18"):
        create_model("timm:resnet181", num_classes=7, in_chans=5, num_cell_types=3)


# ---- labels, folds, losses ------------------------------------------------------------------------------------


def _sites() -> pd.DataFrame:
    rows = []
    for exp in ("HEPG2-01", "HEPG2-02", "HUVEC-01", "HUVEC-02", "HUVEC-03", "RPE-01", "RPE-02", "U2OS-01"):
        for sirna, wt in ((5, "treatment"), (2, "treatment"), (1108, "positive_control"), (1138, "negative_control")):
            rows.append({"dataset": "train", "experiment": exp, "cell_type": exp.split("-")[0], "well_type": wt,
                         "sirna": sirna})
    rows.append({"dataset": "test", "experiment": "HUVEC-17", "cell_type": "HUVEC", "well_type": "treatment",
                 "sirna": None})
    df = pd.DataFrame(rows)
    df["sirna"] = df["sirna"].astype("Int64")
    return df


def test_class_map():
    cm = ClassMap.from_sites(_sites(), include_controls=True)
    assert cm.classes == (2, 5, 1108, 1138) and len(cm) == 4
    assert ClassMap.from_sites(_sites(), include_controls=False).classes == (2, 5)
    enc = cm.encode(torch.tensor([5, -1, 1138, 7, 99999, 2]))
    assert enc.tolist() == [1, IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX, 0]
    assert cm.decode(torch.tensor([0, 3])).tolist() == [2, 1138]
    assert ClassMap.from_dict(cm.to_dict()) == cm
    with pytest.raises(ConfigError):
        cm.decode([4])


def _other_layout_sites() -> pd.DataFrame:
    """A site table of tests/test_other_layouts.py's layout: splits fit/holdout (no hidden labels), compound
    labels, the well type in `kind`, cell types U2OS and A549."""
    from test_other_layouts import TRI

    rows = []
    for split, exps in (("fit", ("E1", "E2", "E3")), ("holdout", ("E4",))):
        for e in exps:
            for compound, kind in ((0, "trt"), (2, "trt"), (99, "negcon")):
                rows.append({"dataset": split, "experiment": e, "cell_type": "A549" if e in ("E1", "E4") else "U2OS",
                             "kind": kind, "compound": compound})
    df = pd.DataFrame(rows).astype({"compound": "Int64"})
    df.attrs["layout"] = TRI
    return df


def test_class_map_and_folds_follow_the_layout():
    sites = _other_layout_sites()
    assert ClassMap.from_sites(sites, include_controls=True).classes == (0, 2, 99)
    assert ClassMap.from_sites(sites, include_controls=False).classes == (0, 2)
    folds = make_folds(sites, 2, seed=0)  # every split is labelled: the holdout experiment too
    assert sorted(folds) == ["E1", "E2", "E3", "E4"] and sorted(folds.values()) == [0, 0, 1, 1]
    from trainer.training.config import DataConfig
    from trainer.training.folds import split_experiments

    with pytest.raises(ConfigError, match=r"unknown \['HEPG2'\]; expected a subset of \('U2OS', 'A549'\)"):
        split_experiments(DataConfig(n_folds=2, cell_types=["HEPG2"]), sites)
    assert set(split_experiments(DataConfig(n_folds=2, cell_types=["A549"]), sites).folds) == {"E1", "E4"}


def test_folds_whole_experiments_stratified():
    sites = _sites()
    folds = make_folds(sites, 2, seed=3)
    assert set(folds) == set(sites.loc[sites.dataset == "train", "experiment"])
    assert folds == make_folds(sites, 2, seed=3)
    for fold in (0, 1):
        train, held = fold_experiments(folds, fold)
        assert held and not set(train) & set(held)
        # cell types with >= 2 experiments appear on both sides
        for ct in ("HEPG2", "HUVEC", "RPE"):
            assert any(e.startswith(ct) for e in held) and any(e.startswith(ct) for e in train)
    assert sorted(list(folds.values()).count(f) for f in (0, 1)) == [4, 4]
    with pytest.raises(ConfigError, match="data.n_folds"):
        make_folds(sites, 9)


def test_losses():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([0, 3, IGNORE_INDEX, 1, 2])
    ce = create_loss("ce", 0.1)(logits, target)
    torch.testing.assert_close(ce, F.cross_entropy(logits[[0, 1, 3, 4]], target[[0, 1, 3, 4]], label_smoothing=0.1))
    bce = create_loss("bce", 0.2)(logits, target)
    keep = [0, 1, 3, 4]
    soft = F.one_hot(target[keep], 4).float() * 0.8 + 0.05
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits[keep], soft))
    none = create_loss("ce")(logits, torch.full((5,), IGNORE_INDEX))
    none.backward()
    assert float(none.detach()) == 0.0 and logits.grad is not None
    with pytest.raises(ConfigError, match="loss.name"):
        create_loss("focal")
