"""Prediction over the loader's TTA views on a tiny store, then submission writing and the step report."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cellio
from cellio.errors import ConfigError, MetadataError
from trainer.infer.aggregate import mean_logits
from trainer.infer.predict import Predictions, concat_predictions, load_predictions, predict
from trainer.infer.report import build_report, format_table, read_truth, write_report
from trainer.infer.submission import write_submission
from trainer.training.checkpoint import save_checkpoint
from trainer.training.config import Config
from trainer.training.labels import ClassMap
from trainer.training.models import list_models, register_model


class _PoolLinear(nn.Module):
    """Channel means (+ cell type one-hot) -> linear: runs on any crop size, so the 17x11 fixture fits."""

    def __init__(self, num_classes: int, in_chans: int, num_cell_types: int):
        super().__init__()
        self.num_cell_types = num_cell_types
        self.fc = nn.Linear(in_chans + num_cell_types, num_classes)

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        feats = x.float().mean(dim=(2, 3))
        onehot = nn.functional.one_hot(cell_type, self.num_cell_types).float()
        return self.fc(torch.cat([feats, onehot], dim=1))


def test_pool_linear(*, num_classes: int, in_chans: int, num_cell_types: int, pretrained=None) -> nn.Module:
    return _PoolLinear(num_classes, in_chans, num_cell_types)


test_pool_linear.__test__ = False  # a model factory, not a pytest test
if "test_pool_linear" not in list_models():
    register_model(test_pool_linear)


@pytest.fixture(scope="module")
def checkpoint(tiny_store, tmp_path_factory):
    cfg = Config()
    cfg.model.name = "test_pool_linear"
    cfg.data.crop_size = 8
    cfg.data.num_workers = 0
    cfg.data.backend = "torch"
    cfg.data.n_folds = 2
    cfg.data.val_fold = 0
    class_map = ClassMap.from_sites(tiny_store.sites, include_controls=True)
    torch.manual_seed(0)
    model = test_pool_linear(num_classes=len(class_map), in_chans=6, num_cell_types=4)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "classes": class_map.to_dict()})
    return path, class_map


def test_predict_stores_every_site_view_once(tiny_store, checkpoint, tmp_path):
    path, class_map = checkpoint
    sites = tiny_store.sites
    exp = sorted(sites.loc[sites["dataset"] == "test", "experiment"].unique())[0]
    preds = predict(path, tiny_store, datasets="test", experiments=[exp], tta="grid9", batch_size=16,
                    progress=False, out=tmp_path / "p.npz")
    want = sites.index[(sites["experiment"] == exp) & (sites["well_type"] == "treatment")]
    got = pd.DataFrame({"index": preds.index, "view": preds.view})
    assert not got.duplicated().any()
    assert set(got["index"]) == set(want) and (got.groupby("index").size() == 9).all()
    assert preds.logits.shape == (len(want) * 9, len(class_map)) and np.isfinite(preds.logits).all()
    assert preds.classes.tolist() == list(class_map.classes)
    back = load_predictions(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.logits, preds.logits)
    assert back.meta["tta"] == "grid9" and back.meta["experiments"] == [exp]
    # The same model on the same site gives different logits per crop but identical ones on a rerun.
    again = predict(path, tiny_store, datasets="test", experiments=[exp], tta="grid9", batch_size=7,
                    progress=False)
    order_a = np.lexsort((preds.view, preds.index))
    order_b = np.lexsort((again.view, again.index))
    np.testing.assert_allclose(preds.logits[order_a], again.logits[order_b], rtol=1e-5, atol=1e-5)
    wells = mean_logits(preds.logits, preds.index, sites, classes=preds.classes)
    assert len(wells) == sites.loc[want, "id_code"].nunique()
    # The 8 dihedral views of the centre crop, each once per site.
    d4 = predict(path, tiny_store, datasets="test", experiments=[exp], tta="center", dihedral=True, progress=False)
    got = pd.DataFrame({"index": d4.index, "view": d4.view})
    assert not got.duplicated().any() and (got.groupby("index")["view"].nunique() == 8).all()
    assert set(got["index"]) == set(want)


def test_predict_validation_uses_the_checkpoints_held_out_experiments(tiny_store, checkpoint):
    path, _ = checkpoint
    preds = predict(path, tiny_store, datasets="validation", tta="center", batch_size=32, progress=False)
    sites = tiny_store.sites.loc[preds.index]
    assert (sites["dataset"] == "train").all() and (preds.view == preds.view[0]).all()
    val = set(sites["experiment"])
    assert 0 < len(val) < tiny_store.sites.loc[tiny_store.sites["dataset"] == "train", "experiment"].nunique()
    assert set(preds.meta["experiments"]) == val
    both = concat_predictions([preds.rows(preds.index % 2 == 0), preds.rows(preds.index % 2 == 1)])
    assert len(both) == len(preds)
    with pytest.raises(MetadataError, match="disjoint"):
        concat_predictions([preds, preds])


def test_concat_predictions_streams_to_a_file_equal_to_the_in_memory_join(tiny_store, checkpoint, tmp_path):
    import numpy as np

    path, _ = checkpoint
    preds = predict(path, tiny_store, datasets="test", tta="center", batch_size=32, progress=False)
    half = preds.rows(preds.index % 2 == 0)
    on_file = predict(path, tiny_store, datasets="test", tta="center", batch_size=32, progress=False,
                      out=tmp_path / "a.npz")
    parts = [half, on_file.rows(on_file.index % 2 == 1)]
    joined = concat_predictions(parts, out=tmp_path / "joined.npz")
    again = load_predictions(tmp_path / "joined.npz")
    assert joined.meta["parts"][0]["checkpoint"] == str(path)
    for got in (joined, again):
        assert np.array_equal(got.index, np.concatenate([p.index for p in parts]))
        np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(concat_predictions(parts).logits))


def test_out_of_fold_prediction_of_a_cell_type_without_held_out_experiments_is_an_error(tiny_store, checkpoint,
                                                                                         tmp_path):
    # a per-cell-type model whose cell type has no experiment in the held-out fold: an empty selection must not
    # silently mean "every site"
    from trainer.training.checkpoint import load_checkpoint
    from trainer.training.folds import split_experiments

    state = load_checkpoint(checkpoint[0])
    cfg = Config.from_dict(state["config"])
    for ct in sorted(tiny_store.sites["cell_type"].unique()):
        cfg.data.cell_types = [ct]
        try:
            split = split_experiments(cfg.data, tiny_store.sites)
        except ConfigError:  # every experiment of this cell type is held out
            continue
        if not split.val:
            break
    else:
        pytest.skip("every cell type of the fixture has a held-out experiment")
    path = tmp_path / "ct.pt"
    save_checkpoint(path, {**state, "config": cfg.to_dict()})
    with pytest.raises(ConfigError, match="held out no experiment"):
        predict(path, tiny_store, datasets="validation", progress=False)


def _sample(tmp_path, ids):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id_code": ids, "sirna": 0}).to_csv(path, index=False)
    return path


def test_write_submission_follows_sample_order_and_validates(tmp_path):
    ids = ["HEPG2-08_1_B03", "HEPG2-08_1_B04", "HUVEC-17_2_C05"]
    sample = _sample(tmp_path, ids)
    preds = pd.DataFrame({"id_code": ["HUVEC-17_2_C05", "HEPG2-08_1_B03", "HEPG2-08_1_B04", "HEPG2-08_1_B02"],
                          "sirna": [7, 3, 5, 1138]})  # an extra control well is simply not submitted
    out = tmp_path / "sub" / "submission.csv"
    frame = write_submission(preds, None, sample, out)
    text = out.read_text().splitlines()
    assert text[0] == "id_code,sirna" and text[1:] == ["HEPG2-08_1_B03,3", "HEPG2-08_1_B04,5", "HUVEC-17_2_C05,7"]
    assert frame["id_code"].tolist() == ids
    with pytest.raises(MetadataError, match="no prediction for 1"):
        write_submission(preds.iloc[1:], None, sample, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
    with pytest.raises(MetadataError, match="allowed treatment classes"):
        write_submission(preds, None, sample, tmp_path / "bad.csv", treatments=[3, 5])
    with pytest.raises(MetadataError, match="twice"):
        write_submission(pd.concat([preds, preds]), None, sample, tmp_path / "bad.csv")
    sites = pd.DataFrame({"id_code": ids[:2], "dataset": "test"})
    with pytest.raises(MetadataError, match="not a test well"):
        write_submission(preds, sites, sample, tmp_path / "bad.csv")


def test_report_scores_each_step_and_writes_json_and_plots(tmp_path):
    truth = pd.DataFrame({"id_code": ["HEPG2-08_1_B03", "HEPG2-08_1_B04", "HUVEC-17_1_B03", "HUVEC-18_1_B03"],
                          "sirna": [1, 2, 3, 4]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    steps = {
        "single view": pd.DataFrame({"id_code": truth["id_code"], "sirna": [1, 0, 0, 0]}),
        "TTA mean": pd.Series({"HEPG2-08_1_B03": 1, "HEPG2-08_1_B04": 2, "HUVEC-17_1_B03": 3}),  # one missing
        "+ plate assignment": pd.DataFrame({"id_code": truth["id_code"], "sirna": [1, 2, 3, 4]}),
    }
    rep = build_report(steps, read_truth(tmp_path / "truth.csv"))
    assert rep["order"] == list(steps)
    s = rep["steps"]
    assert s["single view"]["accuracy"] == 0.25 and s["TTA mean"]["accuracy"] == 0.75
    assert s["TTA mean"]["missing"] == 1 and s["+ plate assignment"]["accuracy"] == 1.0
    assert s["single view"]["per_cell_type"] == {"HEPG2": 0.5, "HUVEC": 0.0}
    assert s["TTA mean"]["per_experiment"] == {"HEPG2-08": 1.0, "HUVEC-17": 1.0, "HUVEC-18": 0.0}
    paths = write_report({"validation": rep, "test": rep}, tmp_path / "report", extra={"note": "x"})
    loaded = json.loads(paths["json"].read_text())
    assert loaded["splits"]["test"]["steps"]["TTA mean"]["accuracy"] == 0.75 and loaded["note"] == "x"
    for key in ("steps", "cell_types"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TTA mean" in format_table({"test": rep})


def test_predictions_reject_inconsistent_arrays():
    with pytest.raises(ConfigError):
        Predictions(np.zeros((3, 2), np.float32), np.arange(3), np.zeros(2, np.int64), np.arange(2))


def test_ensemble_cli_end_to_end_on_the_tiny_set(tiny_raw, tiny_store, checkpoint, tmp_path):
    from trainer.infer.chain.__main__ import main as ensemble_main

    path, _ = checkpoint
    oof = predict(path, tiny_store, datasets="validation", tta="center", progress=False)
    half = oof.index % 2 == 0  # stand-ins for two folds' files of one model
    oof.rows(half).save(tmp_path / "oof_a.npz")
    oof.rows(~half).save(tmp_path / "oof_b.npz")
    predict(path, tiny_store, datasets="test", tta="grid9", progress=False, out=tmp_path / "test1.npz")
    predict(path, tiny_store, datasets="test", tta="center", progress=False, out=tmp_path / "test2.npz")
    store_path = str(tiny_store.path)
    out = tmp_path / "inference"
    folds = f"{tmp_path}/oof_a.npz,{tmp_path}/oof_b.npz"
    rc = ensemble_main(["--store", store_path, "--val-predictions", folds, folds, "--test-predictions", str(tmp_path / "test1.npz"), str(tmp_path / "test2.npz"),
                        "--sample-submission", str(tiny_raw / "sample_submission.csv"),
                        "--test-truth", str(tiny_raw / "test_truth.csv"), "--top-k", "4", "--out", str(out)])
    assert rc == 0
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(tiny_raw / "sample_submission.csv")
    assert sub["id_code"].tolist() == sample["id_code"].tolist()
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["splits"]) == {"validation", "test"}
    test_steps = rep["splits"]["test"]["order"]
    assert test_steps[0] == "single view" and "ensemble + plate assignment" in test_steps
    assert test_steps[-1] == "ensemble + plate assignment, no rotation"
    assert "stacker" in test_steps and "ensemble" in rep["splits"]["validation"]["order"]
    chosen = rep["submission"]
    assert chosen["step"] == chosen["ranking"][0][0] and "expected test accuracy" in chosen["why"]
    assert len(rep["calibration"]["temperatures"]) == 2
    with pytest.raises(ConfigError, match="validation predictions"):  # every model needs out-of-fold views
        ensemble_main(["--store", store_path, "--val-predictions", folds, "--test-predictions",
                       str(tmp_path / "test1.npz"), str(tmp_path / "test2.npz"), "--out", str(out)])


def test_report_scores_well_scores_over_the_truths_classes_only():
    from trainer.infer.aggregate import WellScores

    ids = np.array(["RPE-08_1_B03", "RPE-08_1_B04"], dtype=object)
    # The control output 1108 is the loudest everywhere; among treatments the model is right.
    ws = WellScores(ids, np.array([[2.0, 1.0, 9.0], [1.0, 2.0, 9.0]], np.float32), np.array([5, 6, 1108]))
    truth = pd.Series({"RPE-08_1_B03": 5, "RPE-08_1_B04": 6})
    assert build_report({"mean": ws}, truth)["steps"]["mean"]["accuracy"] == 1.0


def test_adabn_recomputes_batchnorm_per_plate_and_changes_nothing_else(tiny_store):
    from trainer.infer.adabn import bn_modules, bn_state, plate_bn_states
    from trainer.infer.predict import predict_views

    class ConvBN(nn.Module):  # the 17x11 fixture is too small for a DenseNet
        def __init__(self, num_classes: int):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))

    cfg = Config()
    cfg.data.crop_size, cfg.data.num_workers, cfg.data.backend = 8, 0, "torch"
    class_map = ClassMap.from_sites(tiny_store.sites, include_controls=True)
    torch.manual_seed(1)
    model = ConvBN(len(class_map)).eval()
    for m in bn_modules(model):  # as if trained elsewhere: running statistics far from these plates'
        m.running_mean.fill_(3.0)
        m.running_var.fill_(9.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = predict_views(model, cfg, class_map, tiny_store, tta="center", batch_size=5, progress=False)
    adapted = predict_views(model, cfg, class_map, tiny_store, tta="center", batch_size=5, adabn=True,
                            progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model itself is untouched
    order_p, order_a = np.lexsort((plain.view, plain.index)), np.lexsort((adapted.view, adapted.index))
    assert np.array_equal(plain.index[order_p], adapted.index[order_a])
    assert not np.allclose(plain.logits[order_p], adapted.logits[order_a])
    # the per-plate states differ only in BatchNorm buffers, one state per test plate
    stats = cellio.create_loader(tiny_store, 5, train=False, crop_size=8, num_workers=0, backend="torch",
                                 datasets=("test",), controls=False, batch_by="plate", device="cpu")
    states = plate_bn_states(model, stats, torch.device("cpu"), tiny_store.sites)
    test = tiny_store.sites[(tiny_store.sites["dataset"] == "test") & (tiny_store.sites["well_type"] == "treatment")]
    assert set(states) == set(map(tuple, test[["experiment", "plate"]].drop_duplicates().itertuples(index=False)))
    bn_names = {n for n, _ in model.named_buffers() if "running" in n or "num_batches" in n}
    state = next(iter(states.values()))
    assert set(state) == bn_names
    with bn_state(model, state):
        assert not torch.equal(model.state_dict()[next(iter(bn_names))], before[next(iter(bn_names))])
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_a_channels_last_checkpoint_predicts_in_that_layout_with_the_same_logits(tmp_path):
    from cellio.testing import make_store
    from trainer.training.checkpoint import load_for_inference
    from trainer.training.config import load_config
    from trainer.training.models import create_model
    from trainer.training.runtime import in_model_layout

    store = make_store(tmp_path / "s.zarr", size=(40, 40), classes=8)
    class_map = ClassMap.from_sites(store.sites, include_controls=True)
    torch.manual_seed(0)
    weights = create_model("densenet_tiny", num_classes=len(class_map), in_chans=6, num_cell_types=4).state_dict()
    paths = {}
    for layout in ("false", "true"):
        cfg = load_config(None, [f"data.store={store.path}", "data.crop_size=32", "data.num_workers=0",
                                 "data.backend=torch", f"train.channels_last={layout}"])
        paths[layout] = save_checkpoint(tmp_path / f"m_{layout}.pt", {"model": weights, "config": cfg.to_dict(),
                                                                       "classes": class_map.to_dict()})
    model, _, _ = load_for_inference(paths["true"])
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert in_model_layout(torch.zeros(2, 6, 8, 8), model).is_contiguous(memory_format=torch.channels_last)
    plain, _, _ = load_for_inference(paths["false"])
    assert in_model_layout(torch.zeros(2, 6, 8, 8), plain).is_contiguous()
    a, b = (predict(paths[k], store, datasets="test", tta="center", batch_size=8, progress=False)
            for k in ("false", "true"))
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
