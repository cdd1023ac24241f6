"""trainer/training/within.py: training within each experiment's classes (loss.within), the plan that turns it on
for a screen that puts each class in one experiment, and the configurations it refuses."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from cellio.errors import ConfigError
from trainer.training.within import MASKED, class_sets, experiments_per_class


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    """A store's sites where the first experiment screens classes 0-3 only (its other treatment rows dropped) and
    the others every class, with the store's class map."""
    from cellio.testing import make_store
    from trainer.training.labels import ClassMap

    store = make_store(tmp_path_factory.mktemp("w") / "s.zarr", size=(16, 16), classes=8)
    sites = store.sites
    first = sorted(sites["experiment"].unique())[0]
    drop = (sites["experiment"] == first) & (sites["well_type"] == "treatment") & (sites["sirna"] >= 4)
    sites = sites[~drop].reset_index(drop=True)
    return sites, first, ClassMap.from_sites(sites, include_controls=True)


def test_an_experiments_rows_train_over_its_own_classes_only(confined):
    sites, first, class_map = confined
    sets = class_sets(sites, class_map, "experiment")
    rows = torch.as_tensor(np.arange(len(sites)))
    mask = sets.mask(rows)
    idx = class_map.encode(torch.as_tensor(class_map.row_ids(sites))).numpy().copy()
    in_first = (sites["experiment"] == first).to_numpy().copy()
    own = set(idx[in_first & (idx >= 0)])
    assert own == {int(c) for c in np.nonzero(mask[np.nonzero(in_first)[0][0]].numpy())[0]}
    assert len(own) < len(class_map)
    for exp, rows_of in sites.groupby("experiment").indices.items():  # every experiment: exactly its classes
        has = set(idx[rows_of][idx[rows_of] >= 0]) or set(range(len(class_map)))  # none labelled: every class
        assert (mask[torch.as_tensor(rows_of)] == torch.as_tensor([c in has for c in range(len(class_map))])).all()
    labelled = idx >= 0
    assert mask[torch.as_tensor(np.nonzero(labelled)[0]), torch.as_tensor(idx[labelled])].all()  # a row's own class
    logits = torch.zeros(len(sites), len(class_map))
    out = sets.apply(logits, rows)
    assert (out[torch.as_tensor(in_first)][:, [c for c in range(len(class_map)) if c not in own]] == MASKED).all()
    # the softmax over the first experiment's classes: each of its classes gets 1/len(own)
    p = out[torch.as_tensor(in_first)].softmax(-1)
    assert torch.allclose(p.max(-1).values, torch.full((int(in_first.sum()),), 1 / len(own)), atol=1e-6)
    loss = torch.nn.functional.cross_entropy(out[torch.as_tensor(labelled)], torch.as_tensor(idx[labelled]))
    assert torch.isfinite(loss)
    three = sets.apply(torch.zeros(len(sites), 2, len(class_map)), rows)  # per-channel logits (B, K, C)
    assert (three[:, 0] == out).all() and (three[:, 1] == out).all()


def test_plate_sets_and_the_errors(confined):
    sites, first, class_map = confined
    plate = class_sets(sites, class_map, "plate")
    assert len(plate.allowed) == sites.groupby(["experiment", "plate"]).ngroups
    assert class_sets(sites, class_map, "") is None
    with pytest.raises(ConfigError, match="loss.within.*'well'"):
        class_sets(sites, class_map, "well")
    with pytest.raises(ConfigError, match="store rows outside the store"):
        plate.mask(torch.tensor([len(sites)]))


def test_experiments_per_class():
    sites = pd.DataFrame({"experiment": ["a", "a", "b", "b", "c", "c"]})
    assert experiments_per_class(sites, pd.Series(["g1", "g2", "g3", "g4", "g5", "g6"])) == pytest.approx(1 / 3)
    assert experiments_per_class(sites, pd.Series(["g1", "g2", "g1", "g2", "g1", "g2"])) == 1.0
    assert experiments_per_class(sites, pd.Series([None] * 6)) == 1.0


def test_the_plan_trains_within_experiments_where_classes_are_confined_to_them():
    from trainer.job.plan import DataFacts, Hardware, make_plan, parse_overrides
    from trainer.training.config import Config

    facts = DataFacts((128, 128), 600, 0, 80, ("E1", "E2", "E3"), (), ("HUVEC",), 1.0, 1 / 3)
    plan = make_plan(facts, Hardware(2), 600)
    assert plan.within == "experiment" and any("plan.within=experiment" in r for r in plan.reasons)
    assert plan.trainer_config(Config()).loss.within == "experiment"
    everywhere = make_plan(dataclasses.replace(facts, experiments_per_class=1.0), Hardware(2), 600)
    assert everywhere.within == "" and everywhere.trainer_config(Config()).loss.within == ""
    one = make_plan(dataclasses.replace(facts, train_experiments=("E1",)), Hardware(2), 600)
    assert one.within == ""  # one experiment: nothing to confine
    assert make_plan(facts, Hardware(2), 600, {"within": ""}).within == ""
    with pytest.raises(ConfigError, match="plan.within"):
        parse_overrides({"within": "well"})


def test_the_config_refuses_within_with_a_margin_head_or_cached_fusion_features():
    from trainer.training.config import check_config, load_config

    ok = load_config(None, ["loss.within=experiment"])
    check_config(ok)
    with pytest.raises(ConfigError, match="loss.within.*loss.margin=none"):
        check_config(load_config(None, ["loss.within=experiment", "loss.margin=arcface"]))
    with pytest.raises(ConfigError, match="loss.within.*cache_features=false"):
        check_config(load_config(None, ["loss.within=plate", "train.stage=fusion_stage2", "model.name=perchannel_tiny",
                                        "train.init_from=x.pt"]))
    with pytest.raises(ConfigError, match="loss.within"):
        check_config(load_config(None, ["loss.within=well"]))
