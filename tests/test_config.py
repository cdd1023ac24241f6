"""trainer.training.config: typed dataclasses, YAML recipes, dotted overrides, unknown keys rejected, saved config."""
from __future__ import annotations

from pathlib import Path

import pytest

from cellio.errors import ConfigError
from trainer.training.config import Config, load_config, save_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "trainer" / "recipes").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = load_config(None, [])
    assert isinstance(cfg, Config)
    assert cfg.train.stage == "single" and cfg.loss.name == "ce"


def test_override_types_are_parsed():
    cfg = load_config(None, ["optim.lr=3e-4", "data.batch_size=16", "data.cell_types=[HUVEC,RPE]",
                             "model.pretrained=null", "train.compile=true", "model.kwargs.hidden=64",
                             "optim.warmup_epochs=1", "out=/tmp/x", "data.normalize=null"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 16 and isinstance(cfg.data.batch_size, int)
    assert cfg.data.cell_types == ["HUVEC", "RPE"]
    assert cfg.model.pretrained is None and cfg.train.compile is True
    assert cfg.model.kwargs == {"hidden": 64}
    assert cfg.optim.warmup_epochs == 1.0 and isinstance(cfg.optim.warmup_epochs, float)
    assert cfg.out == "/tmp/x" and cfg.data.normalize is None


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimizer.lr=1", "optimizer"),
    ("train.stagee=single", "train.stagee"),
])
def test_unknown_override_key_is_rejected_by_name(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.lr'"):
        load_config(None, ["optim.lrr=1"])


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=abc", "optim.lr"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("train.compile=maybe", "train.compile"),
    ("data.cell_types=HUVEC", "data.cell_types"),
    ("optim.name=adam", "optim.name"),
    ("train.stage=stage3", "train.stage"),
    ("data.val_fold=7", "data.val_fold"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing"),
    ("optim.lr", "KEY=VALUE"),
    ("optim.lr.x=1", "optim.lr"),
])
def test_bad_values_are_rejected_naming_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_a_yaml_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 0.1\n  betas: [0.9, 0.99]\n")
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        load_config(path, [])


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", [])


def test_stage2_needs_init_from():
    with pytest.raises(ConfigError, match="train.init_from"):
        load_config(None, ["train.stage=fusion_stage2", "model.name=perchannel_tiny"])


def test_recipe_then_overrides_precedence(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 0.1\n  epochs: 3\nmodel:\n  kwargs: {hidden: 8}\n")
    cfg = load_config(path, ["optim.lr=0.5"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 3 and cfg.model.kwargs == {"hidden": 8}
    assert cfg.optim.weight_decay == Config().optim.weight_decay  # untouched defaults survive the merge


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads(recipe):
    extra = ["train.init_from=x.pt"] if "stage2" in recipe.stem else []
    cfg = load_config(recipe, ["data.store=/tmp/store.zarr", *extra])
    from trainer.training.models import list_models

    assert cfg.model.name in list_models()


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "data.cell_types=[U2OS]", "model.kwargs.per_cell_type=true"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path, []) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
