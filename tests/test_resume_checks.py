"""A resume checks the config it resumes with: changes of data, folds, model or loss are refused (naming the keys)
before anything in the run directory is overwritten; schedule changes need train.allow_schedule_change and are
then used; bad run directories and seeds fail up front."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from cellio.errors import ConfigError
from trainer.training.checkpoint import load_checkpoint
from trainer.training.config import load_config
from trainer.training.loop import run

BASE = ["data.crop_size=24", "data.batch_size=8", "data.num_workers=0", "data.backend=torch", "data.n_folds=2",
        "data.val_fold=0", "model.name=densenet_tiny", "optim.lr=3e-3", "optim.epochs=2", "train.device=cpu",
        "train.num_threads=1", "train.progress=false", "train.tensorboard=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from cellio.testing import make_store

    return str(make_store(tmp_path_factory.mktemp("resume") / "s.zarr", size=(32, 32), classes=8,
                          train_experiments_per_cell_type=2).path)


@pytest.fixture(scope="module")
def stopped_run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    run(load_config(None, [*BASE, f"data.store={store}", f"out={out}", "train.stop_at_step=3"]))
    return out


@pytest.fixture
def interrupted(store, stopped_run, tmp_path):
    """A copy of a run stopped after 3 steps (fold 0), its config.yaml bytes, and the config for more overrides."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)

    def cfg(*extra: str):
        return load_config(None, [*BASE, f"data.store={store}", f"out={out}", "train.stop_at_step=3", *extra])

    return out, (out / "config.yaml").read_bytes(), cfg


@pytest.mark.parametrize("change, key", [
    ("data.val_fold=1", "data.val_fold"),           # would validate on the experiments it trained on
    ("model.name=perchannel_tiny", "model.name"),   # would fail in load_state_dict
    ("model.kwargs.dropout=0.5", "model.kwargs"),
    ("loss.label_smoothing=0.2", "loss.label_smoothing"),
    ("data.include_controls=false", "data.include_controls"),
])
def test_a_resume_that_changes_what_is_learned_is_refused_before_anything_is_written(interrupted, change, key):
    out, config_bytes, cfg = interrupted
    last_before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        run(cfg(change, "train.allow_schedule_change=true"))  # the flag does not open these keys
    assert "new out=" in str(err.value)
    assert (out / "config.yaml").read_bytes() == config_bytes
    assert (out / "checkpoints" / "last.pt").read_bytes() == last_before


def test_a_schedule_change_needs_the_flag_and_is_then_used(interrupted):
    out, config_bytes, cfg = interrupted
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.003 -> 0\.5.*allow_schedule_change"):
        run(cfg("optim.lr=0.5"))
    assert (out / "config.yaml").read_bytes() == config_bytes
    metrics = run(cfg("train.stop_at_step=0", "optim.lr=0.5", "train.allow_schedule_change=true", "optim.warmup_steps=0",
                      "optim.min_lr_ratio=1.0"))  # a constant schedule: every later step runs at exactly 0.5
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lrs = {e["step"]: e["lr"] for e in events if e["event"] == "train"}
    assert lrs[3] == pytest.approx(3e-3, rel=0.5)  # before the resume (warmup + cosine of the old schedule)
    assert all(lrs[s] == pytest.approx(0.5) for s in lrs if s > 3)
    assert metrics["step"] == max(lrs)
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert saved["config"]["optim"]["lr"] == 0.5
    assert all(g["lr"] == pytest.approx(0.5) for g in saved["optimizer"]["param_groups"])


def test_execution_keys_may_change_on_resume(interrupted):
    out, _, cfg = interrupted
    metrics = run(cfg("train.stop_at_step=0", "train.num_threads=2", "train.progress=true", "data.val_batch_size=5"))
    assert metrics["step"] > 3 and not metrics["stopped_early"]


def test_out_pointing_at_a_file_is_a_clear_error(store, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("not a run directory")
    with pytest.raises(ConfigError, match=r"config key 'out'.*is a file"):
        run(load_config(None, [*BASE, f"data.store={store}", f"out={target}"]))
    assert target.read_text() == "not a run directory"


@pytest.mark.parametrize("override, key", [("train.seed=-1", "train.seed"), ("data.num_workers=-2", "data.num_workers"),
                                           ("train.val_every=0", "train.val_every")])
def test_negative_seeds_and_counts_fail_when_the_config_is_read(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [*BASE, f"out={tmp_path}", override])


def test_an_unchanged_resume_still_continues(interrupted):
    out, _, cfg = interrupted
    metrics = run(cfg("train.stop_at_step=5"))
    assert metrics["step"] == 5 and metrics["stopped_early"]
    assert load_config(out / "config.yaml").train.stop_at_step == 5


def test_a_full_disk_while_saving_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import torch

    from cellio.errors import DiskFullError
    from trainer.training.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})

    def full(obj, f, *a, **k):
        (f if hasattr(f, "write") else open(f, "wb")).write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=r"last\.pt.*saving this checkpoint.*resumes"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_temporary_left_by_a_killed_writer_is_removed_at_the_next_save(tmp_path):
    import subprocess
    import sys

    import torch

    from trainer.training.checkpoint import save_checkpoint

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pt.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"torn")
    foreign = tmp_path / ".best.pt.1.tmp"  # another file's temporary (pid 1 is alive): left alone
    foreign.write_bytes(b"x")
    save_checkpoint(tmp_path / "last.pt", {"step": 3})
    assert not stale.exists() and foreign.exists()
    assert torch.load(tmp_path / "last.pt")["step"] == 3


def test_a_checkpoint_that_cannot_fit_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    # the estimate (the state's tensors) against the free space: no torn temporary, the previous checkpoint intact
    import torch

    import trainer.training.disk
    from cellio.errors import DiskFullError
    from trainer.training.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    monkeypatch.setattr(trainer.training.disk, "free_bytes", lambda directory: 100_000)
    with pytest.raises(DiskFullError, match=r"last\.pt.*saving this checkpoint needs about 4\.\d MiB, 97\.7 KiB free") \
            as err:
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(1 << 20, dtype=torch.float32)}})
    assert err.value.needed_bytes >= 4 << 20 and err.value.free_bytes == 100_000
    assert torch.load(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_torchs_own_full_disk_error_is_a_disk_full_error(tmp_path, monkeypatch):
    # torch 2.x's zip writer reports a short write as "[enforce fail at inline_container.cc:...] . unexpected pos
    # N vs M", without "No space left": written here to /dev/full, a device that is always full
    import torch

    from cellio.errors import DiskFullError
    from trainer.training.checkpoint import save_checkpoint

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this platform")
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, "/dev/full", *a, **k))
    with pytest.raises(DiskFullError, match=r"last\.pt.*saving this checkpoint.*unexpected pos.*resumes"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4096)})
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_file_replaced_atomically_is_whole_or_untouched(tmp_path):
    # the one way the trainer writes a file (configs, plans, predictions, reports, submissions, checkpoints)
    from trainer.training.disk import replaced_atomically

    path = tmp_path / "plan.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer died"):
        with replaced_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with replaced_atomically(path, suffix=".npz") as tmp:  # np.savez appends .npz to a name without it
        assert tmp.parent == tmp_path and tmp.name == f".plan.json.{os.getpid()}.tmp.npz"
        tmp.write_text("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]
