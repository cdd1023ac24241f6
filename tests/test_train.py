"""Training (trainer.training; python -m trainer.train) end to end on a tiny store through cellio.create_loader
(torch backend, CPU): overfitting, exact resume, 2-process torchrun (gloo) against 1 process, the two-stage
per-channel plan, run-dir contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cellio.errors import ConfigError

from trainer.infer.pseudo import label_wells
from trainer.training.checkpoint import load_checkpoint, load_for_inference
from trainer.training.config import load_config
from trainer.training.loop import run

REPO = Path(__file__).resolve().parents[1]

BASE = ["data.crop_size=32", "data.batch_size=8", "data.num_workers=0", "data.backend=torch", "data.n_folds=2",
        "data.val_fold=0", "data.augment=d4_shift", "model.name=densenet_tiny", "optim.lr=3e-3",
        "optim.warmup_steps=2", "train.device=cpu", "train.num_threads=1", "train.progress=false",
        "train.tensorboard=false", "train.log_every=1"]


@pytest.fixture(scope="session")
def train_store(tmp_path_factory):
    """40x40 sites, 8 treatment classes (+3 controls), 4 cell types x 2 train experiments."""
    from cellio.testing import make_store

    return make_store(tmp_path_factory.mktemp("train") / "store.zarr", size=(40, 40), classes=8,
                      train_experiments_per_cell_type=2)


def _cfg(store: str, out: Path, *overrides: str):
    return load_config(None, [*BASE, f"data.store={store}", f"out={out}", *overrides])


def _store_path(store) -> str:
    return str(store.path)


def _events(out: Path, kind: str = "train") -> list[dict]:
    return [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_overfits_a_tiny_set_and_writes_the_run_dir(train_store, tmp_path):
    # one cell type (2 experiments, 80 sites), no augmentation, 12 epochs of 10 steps
    out = tmp_path / "run"
    cfg = load_config(None, [*BASE, f"data.store={_store_path(train_store)}", f"out={out}", "data.augment=eval",
                             "data.val_fold=-1", "data.cell_types=[HUVEC]", "optim.epochs=12",
                             "optim.weight_decay=0", "train.log_every=10", "train.tensorboard=true",
                             "model.kwargs.dropout=0.0"])
    metrics = run(cfg)
    losses = [e["loss"] for e in _events(out)]
    accs = [e["acc"] for e in _events(out)]
    assert metrics["step"] == 12 * (80 // 8) and len(losses) == 12
    assert losses[-1] < 0.5 * losses[0], losses
    assert accs[-1] > max(0.6, 2 * accs[0]), accs
    # the run directory contract
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "last.pt").is_file()
    assert load_config(out / "config.yaml", []) == cfg
    assert any((out / "tb").iterdir())
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "loader", "rng", "config", "classes", "epoch", "step",
            "metrics"} <= set(state)
    model, loaded_cfg, class_map = load_for_inference(out / "checkpoints" / "last.pt")
    assert not model.training and loaded_cfg == cfg and len(class_map) == 11


def test_validation_on_held_out_experiments(train_store, tmp_path):
    out = tmp_path / "val"
    metrics = run(_cfg(_store_path(train_store), out, "optim.epochs=1", "loss.name=bce", "loss.label_smoothing=0.1",
                       "model.kwargs.per_cell_type=true"))
    assert metrics["val_n"] == 160  # the 4 held-out experiments x 40 sites, each exactly once
    assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["chance"] == pytest.approx(1 / 11)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 2
    assert "val_acc_HEPG2" in rows[0] and (out / "checkpoints" / "best.pt").is_file()


def test_resume_after_interruption_continues_identically(train_store, tmp_path):
    # 5 optimizer steps per epoch (160 sites / 16 per batch / accum 2); the stop lands mid-epoch 0
    common = ["data.batch_size=16", "optim.grad_accum=2", "train.max_steps=8", "model.kwargs.dropout=0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(_cfg(_store_path(train_store), straight, *common))
    b1 = run(_cfg(_store_path(train_store), resumed, *common, "train.stop_at_step=3"))
    assert b1["stopped_early"] and b1["step"] == 3
    b2 = run(_cfg(_store_path(train_store), resumed, *common))
    assert a["step"] == b2["step"] == 8
    la = [e["loss"] for e in _events(straight)]
    lb = [e["loss"] for e in _events(resumed)]
    assert [e["step"] for e in _events(resumed)] == list(range(1, 9))
    assert la == lb
    wa = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a["val_acc"] == b2["val_acc"]


def test_a_run_killed_between_a_checkpoint_and_its_validation_validates_that_epoch_on_resume(train_store, tmp_path,
                                                                                            monkeypatch):
    # 20 steps per epoch (160 sites / 8): the step-20 checkpoint closes epoch 0 before its validation runs; a kill
    # there used to resume at epoch 1, and epoch 0 was never validated (nor considered for best.pt)
    import trainer.training.loop

    common = ["optim.epochs=2", "train.ckpt_every=20"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(_cfg(_store_path(train_store), straight, *common))
    real = trainer.training.loop.validate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the validation of epoch 0")

    monkeypatch.setattr(trainer.training.loop, "validate", killed)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(_store_path(train_store), resumed, *common))
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["step"] == 20
    monkeypatch.setattr(trainer.training.loop, "validate", real)
    b = run(_cfg(_store_path(train_store), resumed, *common))
    assert [e["epoch"] for e in _events(resumed, "val")] == [0, 1] == [e["epoch"] for e in _events(straight, "val")]
    assert [e["val_acc"] for e in _events(resumed, "val")] == [e["val_acc"] for e in _events(straight, "val")]
    assert pd.read_csv(resumed / "metrics.csv")["epoch"].tolist() == [0, 1]
    assert a["val_acc"] == b["val_acc"] and a["best_val_acc"] == b["best_val_acc"]


def test_a_full_disk_while_training_names_the_file_and_the_resumed_logs_are_whole(train_store, tmp_path,
                                                                                 monkeypatch):
    # two full disks: while metrics.csv gets its first row (the file is created, the header never lands), and
    # while last.pt is saved after epoch 1's row (torch's own error, written to /dev/full). The resumed run's
    # metrics.csv used to have no header and epoch 1 twice; its log.jsonl events twice.
    import builtins
    import errno

    import trainer.training.runlog
    from cellio.errors import DiskFullError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this platform")
    straight, out = tmp_path / "straight", tmp_path / "full"
    run(_cfg(_store_path(train_store), straight, "optim.epochs=2"))

    def full_metrics(file, mode="r", *args, **kwargs):  # metrics.csv is created, then its first write fails
        if str(file).endswith("metrics.csv"):
            builtins.open(file, mode, *args, **kwargs).close()
            return builtins.open("/dev/full", "w")
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(trainer.training.runlog, "open", full_metrics, raising=False)
    with pytest.raises(DiskFullError, match=r"metrics\.csv: not enough disk space") as err:
        run(_cfg(_store_path(train_store), out, "optim.epochs=2"))
    assert err.value.path == str(out / "metrics.csv")
    monkeypatch.undo()
    real = torch.save

    def full_at_step_40(obj, f, *args, **kwargs):
        if ".last.pt" in str(getattr(f, "name", f)) and obj["step"] == 40:
            with open("/dev/full", "wb") as full:
                return real(obj, full, *args, **kwargs)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_40)
    with pytest.raises(DiskFullError, match=r"last\.pt: not enough disk space: saving this checkpoint"):
        run(_cfg(_store_path(train_store), out, "optim.epochs=2"))
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 20
    run(_cfg(_store_path(train_store), out, "optim.epochs=2"))
    a, b = (pd.read_csv(d / "metrics.csv") for d in (straight, out))
    assert list(b.columns) == list(a.columns) and b["epoch"].tolist() == [0, 1]
    pd.testing.assert_frame_equal(a[["epoch", "step", "val_acc", "val_loss"]], b[["epoch", "step", "val_acc",
                                                                                     "val_loss"]])
    steps = [(e["event"], e["step"]) for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    assert steps == [(e["event"], e["step"]) for e in map(json.loads, (straight / "log.jsonl").read_text()
                                                             .splitlines())]


def test_torchrun_two_processes_agree_with_one(train_store, tmp_path):
    # same global batch (2 x 4 vs 1 x 8); BatchNorm in eval mode (freeze_bn) so a sample's output does not depend
    # on which process holds its batch-mates: the DDP gradient average then equals the 1-process gradient
    common = [f"data.store={_store_path(train_store)}", "train.max_steps=4", "train.freeze_bn=true",
              "model.kwargs.dropout=0.0", "data.augment=d4_shift"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(load_config(None, [*BASE, *common, "data.batch_size=8", f"out={one}"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer.train", *BASE, *common, "data.batch_size=4", f"out={two}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1 = [e["loss"] for e in _events(one)]
    l2 = [e["loss"] for e in _events(two)]
    assert len(l1) == len(l2) == 4
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-5)
    w1 = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=key)
    m1 = load_checkpoint(one / "checkpoints" / "last.pt")["metrics"]
    m2 = load_checkpoint(two / "checkpoints" / "last.pt")["metrics"]
    assert m1["val_n"] == m2["val_n"] == 160  # the sharded validation sees every held-out site once
    assert m1["val_acc"] == pytest.approx(m2["val_acc"])


def test_two_stage_perchannel_plan(train_store, tmp_path):
    store = _store_path(train_store)
    s1, s2, s2b, s2ft = (tmp_path / n for n in ("s1", "s2", "s2b", "s2ft"))
    stage1 = run(_cfg(store, s1, "model.name=perchannel_tiny", "train.stage=perchannel_stage1", "train.max_steps=3"))
    assert 0.0 <= stage1["val_acc"] <= 1.0
    init = s1 / "checkpoints" / "last.pt"
    ext1 = load_checkpoint(init)["model"]
    frozen = ["model.name=perchannel_tiny", "train.stage=fusion_stage2", f"train.init_from={init}",
              "optim.epochs=3"]
    m2 = run(_cfg(store, s2, *frozen))
    assert m2["feature_train_rows"] == 160 and (s2 / "features.zarr").is_dir()
    model, cfg, _ = load_for_inference(s2 / "checkpoints" / "last.pt")  # ONE checkpoint: extractors + head
    state = model.state_dict()
    for key in ext1:
        if key.startswith("extractors."):
            assert torch.equal(state[key], ext1[key]), key   # frozen means frozen
    assert any(not torch.equal(state[k], ext1[k]) for k in ext1 if k.startswith("head."))
    # the cache is reused while its fingerprint holds
    mtime = (s2 / "features.zarr" / "zarr.json").stat().st_mtime_ns
    run(_cfg(store, s2, *frozen))
    assert (s2 / "features.zarr" / "zarr.json").stat().st_mtime_ns == mtime
    # frozen without the cache: the image loop, extractors still untouched
    run(_cfg(store, s2b, *frozen[:-1], "train.cache_features=false", "train.max_steps=2"))
    state_b = load_checkpoint(s2b / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(state_b[k], ext1[k]) for k in ext1 if k.startswith("extractors."))
    # fine-tuned extractors move
    run(_cfg(store, s2ft, *frozen[:-1], "train.freeze_extractors=false", "train.max_steps=2"))
    state_ft = load_checkpoint(s2ft / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(state_ft[k], ext1[k]) for k in ext1 if k.startswith("extractors."))


def test_cached_fusion_head_resumes_exactly(train_store, tmp_path):
    # the head on cached features runs through the same loop as images, so it resumes bit for bit too
    store = _store_path(train_store)
    s1 = tmp_path / "s1"
    run(_cfg(store, s1, "model.name=perchannel_tiny", "train.stage=perchannel_stage1", "train.max_steps=2"))
    head = ["model.name=perchannel_tiny", "train.stage=fusion_stage2", f"train.init_from={s1 / 'checkpoints' / 'last.pt'}",
            "optim.epochs=4", "model.kwargs.dropout=0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(_cfg(store, straight, *head))
    b1 = run(_cfg(store, resumed, *head, "train.stop_at_step=5"))
    assert b1["stopped_early"] and b1["step"] == 5
    b2 = run(_cfg(store, resumed, *head))
    assert a["step"] == b2["step"] == 4 * (160 // 8)
    assert [e["loss"] for e in _events(straight)] == [e["loss"] for e in _events(resumed)]
    wa = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["val_acc"] == b2["val_acc"]


@pytest.mark.parametrize("options", [
    ["train.amp=bf16", "train.channels_last=true", "optim.name=sgd", "optim.grad_clip=1.0",
     "optim.warmup_steps=0", "optim.warmup_epochs=0.5"],
    ["train.amp=fp16", "loss.name=bce", "model.kwargs.hidden=16"],
], ids=["bf16-channels_last-sgd-clip", "fp16-scaler-bce-mlp"])
def test_loop_options(train_store, tmp_path, options):
    metrics = run(_cfg(_store_path(train_store), tmp_path / "o", "train.max_steps=2", *options))
    assert metrics["step"] == 2 and metrics["val_n"] == 160
    assert all(e["loss"] == e["loss"] for e in _events(tmp_path / "o"))  # finite, not NaN


@pytest.fixture(scope="module")
def single_ckpt(train_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("pl_init") / "single"
    run(_cfg(_store_path(train_store), out, "train.max_steps=10", "data.augment=d4_shift"))
    return out / "checkpoints" / "last.pt"


PSEUDO = ["train.stage=pseudo_label", "optim.epochs=4", "pseudo.rounds=2", "pseudo.first_fraction=0.5",
          "pseudo.fraction_step=0.5", "model.kwargs.dropout=0.2"]


@pytest.mark.parametrize("source", ["embedding", "logits"])
def test_pseudo_label_rounds_respect_the_plate_and_report_precision(train_store, single_ckpt, tmp_path, source):
    out = tmp_path / "pl"
    m = run(_cfg(_store_path(train_store), out, *PSEUDO, f"pseudo.source={source}", f"train.init_from={single_ckpt}"),
            labeller=label_wells)
    rounds = m["pseudo_rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and [r["epoch"] for r in rounds] == [0, 2]
    assert rounds[1]["pseudo_labels"] > rounds[0]["pseudo_labels"] > 0
    assert all(0.0 <= r["validation_precision"] <= 1.0 and r["validation_labelled"] > 0 for r in rounds)
    assert [e["round"] for e in _events(out, "stage")] == [0, 1]
    labels = pd.DataFrame(load_checkpoint(out / "checkpoints" / "last.pt")["stage"]["labels"])
    plate = labels["id_code"].str.rsplit("_", n=1).str[0]
    assert not labels.assign(plate=plate).duplicated(["plate", "sirna"]).any()  # never two wells one class
    assert m["step"] == 4 * (160 // 8)  # epochs keep the train experiments' length as labels are added


def test_resume_through_a_pseudo_label_round_is_bit_identical(train_store, single_ckpt, tmp_path):
    store = _store_path(train_store)
    common = [*PSEUDO, f"train.init_from={single_ckpt}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(_cfg(store, straight, *common), labeller=label_wells)
    run(_cfg(store, resumed, *common, "train.stop_at_step=45"), labeller=label_wells)  # mid epoch 2, round 1 started
    b = run(_cfg(store, resumed, *common), labeller=label_wells)
    assert [e["loss"] for e in _events(straight)] == [e["loss"] for e in _events(resumed)]
    wa = load_checkpoint(straight / "checkpoints" / "last.pt")
    wb = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wa["stage"] == wb["stage"] and a["val_acc"] == b["val_acc"]


def test_the_pseudo_label_stage_needs_a_labeller(train_store, single_ckpt, tmp_path):
    # training never imports inference: whoever starts a pseudo-label run hands it the labeller
    with pytest.raises(ConfigError, match="no labeller"):
        run(_cfg(_store_path(train_store), tmp_path / "pl", *PSEUDO, f"train.init_from={single_ckpt}"))
    assert not (tmp_path / "pl").exists()  # refused before the run directory is made


@pytest.mark.parametrize("source", ["embedding", "logits"])
def test_pseudo_labels_under_torchrun_agree_across_ranks(train_store, single_ckpt, tmp_path, source):
    # the stage all-gathers every rank's predictions and checks that all ranks chose the same labels
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer.train", *BASE, *PSEUDO, f"data.store={_store_path(train_store)}", "data.batch_size=4",
           f"pseudo.source={source}", f"train.init_from={single_ckpt}", f"out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = _events(out, "stage")
    assert [e["round"] for e in rounds] == [0, 1] and all(e["pseudo_labels"] > 0 for e in rounds)


def test_margin_loss_penalises_the_true_class_and_skips_unlabelled_rows():
    import math

    import torch.nn.functional as F

    from trainer.training.labels import IGNORE_INDEX
    from trainer.training.losses import MarginLoss

    cos = torch.tensor([[0.8, 0.1, -0.2], [0.3, 0.6, 0.0], [0.5, 0.5, 0.5]], requires_grad=True)
    target = torch.tensor([0, 1, IGNORE_INDEX])
    plain = F.cross_entropy(30 * cos[:2], target[:2])
    arc = MarginLoss("arcface", 0.5, 30)(cos, target)
    cosface = MarginLoss("cosface", 0.35, 30)(cos, target)
    assert arc > plain and cosface > plain  # the margin makes the true class harder to win
    arc.backward()
    assert torch.isfinite(cos.grad).all() and cos.grad[2].abs().sum() == 0  # the unlabelled row has no gradient
    # by hand for row 0 of ArcFace: target logit 30 * cos(acos(0.8) + 0.5)
    t = 30 * math.cos(math.acos(0.8) + 0.5)
    row0 = -t + math.log(math.exp(t) + math.exp(3.0) + math.exp(-6.0))
    row1_t = 30 * math.cos(math.acos(0.6) + 0.5)
    row1 = -row1_t + math.log(math.exp(9.0) + math.exp(row1_t) + 1.0)
    assert abs(arc.item() - (row0 + row1) / 2) < 1e-4


def test_a_margin_head_trains_beside_the_plain_head_and_predicts_with_the_plain_one(train_store, tmp_path):
    out = tmp_path / "arc"
    m = run(_cfg(_store_path(train_store), out, "train.max_steps=6", "loss.margin=arcface", "loss.margin_weight=0.2"))
    assert m["step"] == 6 and m["val_n"] == 160
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert "margin_head.weight" in state["model"]
    model, cfg, classes = load_for_inference(out / "checkpoints" / "last.pt")
    logits = model(torch.zeros(2, 6, 32, 32), torch.zeros(2, dtype=torch.long))
    assert cfg.loss.margin == "arcface" and logits.shape == (2, len(classes))
    with pytest.raises(Exception, match="loss.margin"):
        run(_cfg(_store_path(train_store), tmp_path / "bad", "loss.margin=arcface", "train.stage=perchannel_stage1",
                 "model.name=perchannel_tiny"))


def test_a_three_channel_layout_trains_and_its_checkpoint_rebuilds_the_same_model(tmp_path, monkeypatch):
    """A store of another layout (3 channels, cell types U2OS/A549, splits fit/holdout with no hidden labels): the
    model is built with its channel count and cell types, metrics.csv has a column per cell type, and the checkpoint
    records what load_for_inference needs to rebuild the same model (one without that record is RxRx1's)."""
    import cellio
    from tri_dataset import register_tri, write_tri_raw

    from trainer.training.checkpoint import DataShape

    register_tri(monkeypatch)
    raw = write_tri_raw(tmp_path / "raw")
    cellio.ingest(raw, tmp_path / "tri.zarr", reader="tri", workers=1, progress=False)
    out = tmp_path / "run"
    metrics = run(load_config(None, [*BASE, f"data.store={tmp_path / 'tri.zarr'}", f"out={out}", "data.crop_size=16",
                                     "data.batch_size=4", "train.max_steps=3"]))
    assert metrics["step"] == 3 and metrics["num_classes"] == 4  # compounds 0, 1, 2 and the control 99
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_acc_U2OS", "val_acc_A549"} <= set(header) and "val_acc_HEPG2" not in header
    held = json.loads((out / "folds.json").read_text())
    assert sorted(held["train"] + held["val"]) == ["EXP-1", "EXP-2", "EXP-3", "EXP-4"]  # holdout is labelled too
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["data"] == {"in_chans": 3, "cell_types": ["U2OS", "A549"], "layout": "tri"}
    model, _, class_map = load_for_inference(out / "checkpoints" / "last.pt")
    assert model.data_shape == DataShape(3, ("U2OS", "A549"), "tri") and model.features.conv0.in_channels == 3
    assert class_map.classes == (0, 1, 2, 99)
    del state["data"]  # a checkpoint from before the record: RxRx1's 6 channels, which these weights do not fit
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(cellio.ConfigError, match="6 input channels"):
        load_for_inference(tmp_path / "old.pt")
