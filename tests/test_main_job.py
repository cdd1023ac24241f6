"""The main job's plan (trainer.job.plan, pure) and the GPU plan's code path run end to end on a CPU at tiny size:
one process, and torchrun with two (gloo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellio.errors import ConfigError
from trainer.job.plan import STEP_QUANTUM, DataFacts, Hardware, fit_to_budget, make_plan
from trainer.training.config import Config

ROOT = Path(__file__).resolve().parents[1]
FACTS = DataFacts((512, 512), 1300, 440, 60, tuple(f"E{i}" for i in range(8)), ("T1", "T2", "T3", "T4"),
                  ("HEPG2", "HUVEC", "RPE", "U2OS"), 2.0)


def test_the_cpu_plan_crops_a_share_of_the_site_and_uses_the_torch_loader():
    plan = make_plan(FACTS, Hardware(2), 14 * 60)
    assert (plan.device, plan.model, plan.backend, plan.num_workers, plan.threads) == ("cpu", "densenet_tiny",
                                                                                       "torch", 0, 2)
    assert plan.crop == 224 and plan.n_folds == 4 and plan.val_fold == 0
    small = make_plan(DataFacts((256, 256), *[getattr(FACTS, f) for f in ("train_sites", "test_sites", "classes",
                      "train_experiments", "test_experiments", "cell_types", "sites_per_well")]), Hardware(2), 600)
    assert small.crop == 112  # the same share of a smaller site
    assert any("0.44 of the" in r for r in plan.reasons)


def test_the_gpu_plan_and_overrides():
    plan = make_plan(FACTS, Hardware(16, (("H200", 139.0),) * 8, dali=True), 3 * 3600)
    assert (plan.device, plan.processes, plan.backend, plan.model, plan.crop) == ("cuda", 8, "dali",
                                                                                  "densenet161", 384)
    one = make_plan(FACTS, Hardware(16, (("H200", 139.0),), dali=False), 3600)
    assert (one.model, one.backend) == ("densenet121", "torch")
    over = make_plan(FACTS, Hardware(2), 600, {"crop": 160, "eval_tta": "center"})
    assert over.crop == 160 and over.eval_tta == "center" and "plan.crop=160 (override)" in over.reasons
    with pytest.raises(ConfigError, match="plan.cropsize"):
        make_plan(FACTS, Hardware(2), 600, {"cropsize": 3})


@pytest.mark.parametrize("key, value, expected", [
    ("crop", "abc", "an integer"), ("crop", 3.5, "an integer"), ("dihedral", "maybe", "true/false"),
    ("lr", "fast", "a number"), ("whiten", 1, "true/false"), ("embed_tta", None, "a string"),
])
def test_a_plan_override_of_the_wrong_type_names_the_override(key, value, expected):
    # a typo'd value is a ConfigError naming plan.<key> and what it expects, never int()'s ValueError (nor a
    # silent bool("maybe") == True)
    with pytest.raises(ConfigError, match=rf"plan\.{key}.*expected {expected}, found {value!r}"):
        make_plan(FACTS, Hardware(2), 600, {key: value})


def test_steps_come_from_the_budget_and_a_too_small_budget_is_an_error():
    plan = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"pseudo_share": 1 / 3}), step_s=0.8, view_s=0.012,
                         spent_s=60, facts=FACTS)
    assert plan.steps_single % STEP_QUANTUM == 0 and plan.steps_pseudo % STEP_QUANTUM == 0
    assert 1.8 <= plan.steps_single / plan.steps_pseudo <= 2.3
    used = sum(plan.estimates.values())
    assert 0.85 * 14 * 60 <= used <= 14 * 60  # the budget, less a safety margin
    with pytest.raises(ConfigError, match="raise --budget"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 120), step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)


def test_one_stage_plan_spends_the_pseudo_label_time_on_single_steps():
    # measured on the foreign subtle set: at a CPU budget one stage pays more, so it is the CPU default
    assert make_plan(FACTS, Hardware(2), 14 * 60).pseudo_share == 0.0
    assert make_plan(FACTS, Hardware(16, (("H200", 139.0),)), 3600).pseudo_share > 0  # the GPU plan keeps it
    two = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"pseudo_share": 1 / 3}), step_s=0.8, view_s=0.012,
                        spent_s=60, facts=FACTS)
    one = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60), step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)
    assert one.steps_pseudo == 0 and one.estimates["pseudo-label predictions"] == 0
    # the labelling rounds' prediction time goes to training too
    assert one.steps_single > two.steps_single + two.steps_pseudo
    with pytest.raises(ConfigError, match="pseudo_share"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"pseudo_share": 1.0}), step_s=0.8, view_s=0.012,
                      spent_s=60, facts=FACTS)


def test_finetune_share_splits_the_steps_per_cell_type_and_counts_their_predictions():
    base = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"embed_tta": "center"}), step_s=0.8, view_s=0.012,
                         spent_s=60, facts=FACTS)
    ft = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"finetune_share": 0.25, "embed_tta": "center"}),
                       step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)
    # with whole-site embeddings (twice: joint and fine-tuned) a quarter of this budget is under a quantum per cell
    # type: the plan says so rather than fine-tuning for nothing
    none = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"finetune_share": 0.25}), step_s=0.8, view_s=0.012,
                         spent_s=60, facts=FACTS)
    assert none.steps_finetune == 0 and any("no fine-tuning" in r for r in none.reasons)
    assert base.steps_finetune == 0 and ft.steps_finetune > 0 and ft.steps_finetune % STEP_QUANTUM == 0
    # the four cell types' runs come out of the same budget, and their predictions cost training steps too
    assert ft.steps_single + 4 * ft.steps_finetune < base.steps_single
    assert ft.estimates["predict"] > base.estimates["predict"]
    assert make_plan(FACTS, Hardware(16, (("H200", 139.0),)), 3600).finetune_share > 0  # the GPU plan fine-tunes
    with pytest.raises(ConfigError, match="finetune_share"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"pseudo_share": 0.5, "finetune_share": 0.5}),
                      step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)


def test_embedding_views_are_paid_for_in_steps_and_checked():
    # whole 512 px sites cost (512/224)^2 crops each: fewer steps than centre-crop embeddings, same budget
    full = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60), step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)
    centre = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"embed_tta": "center"}), step_s=0.8,
                           view_s=0.012, spent_s=60, facts=FACTS)
    assert full.embed_tta == "full" and full.whiten and full.trainer_config(Config()).train.channels_last is True
    extra = 0.012 * (FACTS.train_sites + FACTS.test_sites) * ((512 / 224) ** 2 - 1)
    assert full.estimates["predict"] - centre.estimates["predict"] == pytest.approx(extra)
    assert full.steps_single < centre.steps_single
    assert "embeddings of full views, whitened centroids" in full.describe()
    with pytest.raises(ConfigError, match="plan.embed_tta"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"embed_tta": "whole"}), step_s=0.8, view_s=0.012,
                      spent_s=60, facts=FACTS)


def test_a_refit_takes_its_share_of_the_steps_and_the_plan_says_when_it_cannot():
    assert make_plan(FACTS, Hardware(2), 14 * 60).refit_share == 0  # measured not to pay: off by default
    plan = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"refit_share": 0.3}), step_s=0.8, view_s=0.012,
                         spent_s=60, facts=FACTS)
    assert plan.steps_refit > 0 and plan.steps_refit % STEP_QUANTUM == 0
    total = plan.steps_single + plan.steps_refit
    assert abs(plan.steps_refit / total - plan.refit_share) < 0.05
    assert plan.estimates["train"] == pytest.approx(total * 0.8 * 1.15)
    # the model before the refit embeds the train wells once more: paid for in steps
    base = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60), step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)
    assert plan.estimates["predict"] > base.estimates["predict"] and total < base.steps_single
    assert make_plan(FACTS, Hardware(16, (("H200", 139.0),)), 3600).refit_share == 0
    # no held-out fold: nothing to refit, and the plan says why
    every = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"val_fold": -1, "refit_share": 0.3}), step_s=0.8,
                          view_s=0.012, spent_s=60, facts=FACTS)
    assert every.steps_refit == 0 and any(r.startswith("no held-out fold") for r in every.reasons)
    assert every.steps_single >= total
    with pytest.raises(ConfigError, match="do not combine"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"finetune_share": 0.2, "refit_share": 0.3}),
                      step_s=0.8, view_s=0.012, spent_s=60, facts=FACTS)
    with pytest.raises(ConfigError, match="plan.refit_share"):
        fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"refit_share": 1.0}), step_s=0.8, view_s=0.012,
                      spent_s=60, facts=FACTS)


def test_a_rerun_refuses_plan_overrides_its_saved_plan_would_ignore(tmp_path):
    """OUT/plan.json is reused by a rerun: an override it does not have is named, not silently dropped (a rerun
    asking plan.objective=mae once trained the old classifier again)."""
    from dataclasses import replace

    from trainer.job.plan import load_plan, save_plan
    from trainer.job.planning import check_rerun_overrides

    plan = make_plan(FACTS, Hardware(2), 14 * 60, {"steps_single": 600, "steps_pseudo": 0})  # no fit: both given
    save_plan(plan, tmp_path / "plan.json")
    saved = load_plan(tmp_path / "plan.json")
    assert saved.overrides == {"steps_single": 600, "steps_pseudo": 0}
    check_rerun_overrides(saved, {"steps_single": 600, "steps_pseudo": 0}, tmp_path / "plan.json")
    check_rerun_overrides(saved, {}, tmp_path / "plan.json")
    with pytest.raises(ConfigError, match=r"plan.objective='mae' \(the saved plan was made with no such override\)"
                                          r".*plan.steps_single=700 \(the saved plan was made with "
                                          r"plan.steps_single=600\).*delete"):
        check_rerun_overrides(saved, {"objective": "mae", "steps_single": 700}, tmp_path / "plan.json")
    with pytest.raises(ConfigError, match="plan.crop.*expected an integer"):
        check_rerun_overrides(saved, {"crop": "abc"}, tmp_path / "plan.json")
    # a single step override is refitted to the budget; the rerun with the same override is not refused
    fitted = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"steps_single": 600}), step_s=0.8, view_s=0.012,
                           spent_s=60, facts=FACTS)
    assert fitted.steps_single != 600
    check_rerun_overrides(fitted, {"steps_single": 600}, tmp_path / "plan.json")
    # a plan.json from before the record: compared field by field
    old = replace(fitted, overrides=None)
    check_rerun_overrides(old, {"steps_single": 600}, tmp_path / "plan.json")
    with pytest.raises(ConfigError, match=r"plan.objective='mae' \(the saved plan has 'classify'\)"):
        check_rerun_overrides(old, {"objective": "mae"}, tmp_path / "plan.json")


def test_the_refit_is_sized_to_the_time_left_and_the_plan_saved(tmp_path):
    from trainer.job.options import JobOptions
    from trainer.job.plan import load_plan
    from trainer.job.runs import seconds_per_step, size_refit

    plan = fit_to_budget(make_plan(FACTS, Hardware(2), 14 * 60, {"refit_share": 0.3}), step_s=0.8, view_s=0.012,
                         spent_s=60, facts=FACTS)
    opts = JobOptions(out=tmp_path)
    after = 14 * 60 - plan.estimates["predict"] - plan.estimates["chain"] - 0.05 * 14 * 60
    size_refit(plan, opts, elapsed_s=after - 201.0, step_s=0.5)  # 402 steps' time
    assert plan.steps_refit == 400 and load_plan(tmp_path / "plan.json").steps_refit == 400
    size_refit(plan, opts, elapsed_s=after - 10.0, step_s=0.5)  # under a quantum of steps left: no refit
    assert plan.steps_refit == 0 and "no refit" in plan.reasons[-1]
    log = tmp_path / "log.jsonl"
    # the interval with a validation pass (20 -> 30) does not count: the refit has none
    log.write_text("\n".join(json.dumps(e) for e in [{"event": "train", "step": 10, "time": 100.0},
                                                       {"event": "train", "step": 20, "time": 106.0},
                                                       {"event": "val", "step": 30, "time": 112.0},
                                                       {"event": "train", "step": 30, "time": 115.0},
                                                       {"event": "train", "step": 40, "time": 121.0}]))
    assert seconds_per_step(log) == pytest.approx(0.6)
    # steps given as overrides skip the plan's share check: the job refuses both before any training
    from trainer.job.runs import train_models

    both = make_plan(FACTS, Hardware(2), 600, {"steps_refit": 25, "steps_finetune": 25})
    with pytest.raises(ConfigError, match="do not combine"):
        train_models(both, opts, tmp_path / "no.zarr", 0.0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from cellio.testing import make_raw

    return make_raw(tmp_path_factory.mktemp("job") / "rxrx1", size=(40, 40), classes=8,
                    train_experiments_per_cell_type=2)


TINY = ["plan.model=densenet_tiny", "plan.crop=32", "plan.batch=8", "plan.steps_single=8", "plan.steps_pseudo=4",
        "plan.pseudo_rounds=2", "plan.eval_tta=center"]


@pytest.mark.parametrize("args, message", [
    (["plan.crops=200"], r"plan\.crops: not a plan field"),
    (["plan.crop=abc"], r"plan\.crop.*expected an integer"),
    (["plan.crop"], r"override 'plan\.crop': expected KEY=VALUE"),
    (["plan.eval_tta=nine"], r"plan\.eval_tta: expected one of"),
    (["plan.pseudo_share=1.5"], r"plan\.pseudo_share: expected a share"),
    (["plan.batch=0"], r"plan\.batch: expected an integer >= 1"),
    (["plan.model=densenet_tyny"], r"plan\.model.*unknown model 'densenet_tyny'"),
    (["model.name=densenet_tyny"], r"model\.name.*unknown model 'densenet_tyny'"),
    (["optim.lrr=0.1"], r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'"),
    (["--recipe", "no_such_recipe.yaml"], r"no_such_recipe\.yaml.*does not exist"),
    (["--budget", "0"], r"--budget: expected a positive number of minutes"),
    (["--workers", "0"], r"--workers: expected an integer >= 1 or None, found 0"),
])
def test_every_override_and_the_budget_are_checked_before_any_work(raw, tmp_path, capsys, args, message):
    # on the real data the ingest takes hours: a typo must be reported before data, metadata and ingest run
    import re

    from trainer.demo import main

    out = tmp_path / "out"
    assert main(["--data", str(raw), "--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "== 1. data" not in captured.out and not (out / "store.zarr").exists()


def test_a_batch_the_training_sites_cannot_fill_names_plan_batch(raw, tmp_path, capsys):
    # the loader's words (last_batch='drop', batch_size) used to reach the user of the main job, who set plan.batch
    from trainer.demo import main

    out = tmp_path / "out"
    assert main(["--data", str(raw), "--out", str(out), "--hardware", "cpu", *TINY, "plan.batch=4096"]) == 2
    err = capsys.readouterr().err
    assert "plan.batch=4096" in err and "last_batch" not in err, err
    assert not (out / "runs").exists()  # before any training (the budget's measurement included)


@pytest.mark.parametrize("module", ["trainer.demo", "trainer.train", "trainer.infer.embed", "trainer.job.rehearse"])
def test_help_describes_the_command_in_whole_sentences(module):
    # `python -m trainer.demo --help` stopped at "... a plan from the data and the machine -> a 6-channel"
    import ast

    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = ast.get_docstring(ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text()))
    first_paragraph = doc.split("\n\n")[0]
    assert first_paragraph.endswith(".")
    # argparse rewraps it (and may break "fine-tuning" at its hyphen): compared without whitespace
    assert "".join(first_paragraph.split()) in "".join(proc.stdout.split())


def test_the_job_console_shows_the_steps_records_once_and_only_while_the_job_runs(capsys):
    # the job's steps report through logging; its one printer shows them on stdout under the step headers
    import logging

    from trainer.job.console import console

    log = logging.getLogger("trainer.job.dataset")
    job = logging.getLogger("trainer.job")
    with console() as printer:
        with console() as inner:  # the rehearsal runs the main job inside its own console: one printer
            assert inner is printer
        t0 = printer.step("1. data")
        log.info("using %s", "/data/rxrx1")
        log.info("a table\nof two lines")
        log.warning("rotation evidence contested in %s", "HEPG2-08")
        log.debug("not for the console")
        printer.done(t0)
    log.info("after the job")
    out = capsys.readouterr()
    assert out.out.startswith("\n== 1. data\n   using /data/rxrx1\n   a table\n   of two lines\n"
                              "   WARNING: rotation evidence contested in HEPG2-08\n   (")
    assert "not for the console" not in out.out and "after the job" not in out.out
    assert "rotation evidence" not in out.err  # not a second time through the root logger
    assert job.propagate and not job.handlers and job.level == logging.NOTSET


@pytest.mark.parametrize("processes", [1, 2])
def test_the_gpu_plan_runs_end_to_end_on_cpu(raw, tmp_path, processes):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.demo", "--data", str(raw), "--out", str(out), "--hardware", "gpu",
           f"plan.processes={processes}", "plan.steps_finetune=4", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["processes"] == processes and plan["device"] == "cpu" and plan["lr"] == 6e-4  # the GPU recipe
    assert ("torchrun" in proc.stdout) == (processes > 1)
    for stage in ("single", "pseudo"):
        assert (out / "runs" / stage / "checkpoints" / "last.pt").is_file()
    sub = pd.read_csv(out / "submission.csv")
    assert sub["id_code"].tolist() == pd.read_csv(raw / "sample_submission.csv")["id_code"].tolist()
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["processes"] == processes and report["training"]["pseudo"]["rounds"]
    # per-cell-type fine-tuning from the pseudo-label model: one run per cell type, one more ensemble member
    # (its TTA mean and its embedding centroids) covering the same wells as the joint model
    tuned = report["training"]["finetune"]
    assert sorted(tuned) == ["HEPG2", "HUVEC", "RPE", "U2OS"]
    for ct in tuned:
        cfg = (out / "runs" / f"finetune_{ct}" / "config.yaml").read_text()
        assert f"- {ct}" in cfg and "pseudo/checkpoints/last.pt" in cfg
    assert len(report["calibration"]["temperatures"]) == 4
    from trainer.infer.predict import load_predictions

    for ds in ("validation", "test"):
        joint, tuned_p = (load_predictions(out / "predictions" / f"{m}_{ds}.npz") for m in ("model", "finetune"))
        assert sorted(zip(joint.index, joint.view)) == sorted(zip(tuned_p.index, tuned_p.view))


def test_the_refit_trains_on_every_experiment_and_scores_only_test(raw, tmp_path):
    # a refit (plan.steps_refit): validation (predictions and the centroids' embeddings) from the model before it,
    # so no held-out well is scored by a model that trained on it; test from the model after it
    import numpy as np
    import yaml

    from trainer.infer.predict import load_predictions

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.demo", "--data", str(raw), "--out", str(out), "--hardware", "cpu",
           "plan.steps_refit=4", *[t for t in TINY if "pseudo" not in t], "plan.steps_pseudo=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single, refit = out / "runs" / "single", out / "runs" / "refit"
    cfg, before = (yaml.safe_load((run / "config.yaml").read_text()) for run in (refit, single))
    assert cfg["data"]["val_fold"] == -1 and cfg["train"]["init_from"] == str(single / "checkpoints" / "last.pt")
    assert cfg["train"]["max_steps"] == 4 and cfg["optim"]["lr"] == pytest.approx(0.5 * before["optim"]["lr"])
    held = json.loads((single / "folds.json").read_text())["val"]
    every = json.loads((refit / "folds.json").read_text())
    assert held and every["val"] == [] and set(held) <= set(every["train"])
    pred = out / "predictions"
    assert load_predictions(pred / "model_validation.npz").meta["checkpoint"] == str(single / "checkpoints/last.pt")
    assert load_predictions(pred / "model_test.npz").meta["checkpoint"] == str(refit / "checkpoints/last.pt")
    sites = pd.read_csv(raw / "train.csv")
    with np.load(pred / "embeddings_validation.npz") as z:
        assert str(z["checkpoint"]) == str(single / "checkpoints/last.pt")
        assert set(z["id_codes"]) <= set(sites["id_code"]) | set(pd.read_csv(raw / "train_controls.csv")["id_code"])
    with np.load(pred / "embeddings.npz") as z:
        assert str(z["checkpoint"]) == str(refit / "checkpoints/last.pt")
    report = json.loads((out / "report.json").read_text())
    assert "refit" in report["training"] and report["plan"]["steps_refit"] == 4


def test_a_repeated_budget_measurement_times_only_its_own_steps(raw, tmp_path):
    # a plan that failed (budget too small) and is measured again must not read the first attempt's log as its own
    import cellio
    from trainer.job.options import JobOptions
    from trainer.job.planning import measure

    store_path = tmp_path / "s.zarr"
    cellio.ingest(raw, store_path, workers=1)
    store = cellio.open_store(store_path)
    plan = make_plan(DataFacts.from_store(store), Hardware(1), 600, {"crop": 32, "batch": 8, "eval_tta": "center"})
    opts = JobOptions(out=tmp_path / "out", data=raw)
    measure(plan, opts, store, store_path)
    step_s, view_s = measure(plan, opts, store, store_path)
    log = (opts.out / "runs" / "calibration" / "log.jsonl").read_text().splitlines()
    assert sum(json.loads(e)["event"] == "train" for e in log) == 8
    assert 0 < step_s < 5 and 0 < view_s < 1


TRI_JOB = ["--hardware", "cpu", "plan.crop=16", "plan.batch=4", "plan.steps_single=6", "plan.steps_pseudo=0",
           "plan.eval_tta=center", "plan.embed_tta=center", "plan.n_folds=2"]


def test_the_main_job_on_another_layout_scores_held_out_experiments_and_embeds_every_well(tmp_path, monkeypatch):
    """tests/test_other_layouts.py's three-channel layout (no hidden test labels): the job trains the compound
    classifier with whole experiments held out, reports their accuracy per perturbation type and cell type, and
    writes one embedding per well in the form trainer.maps reads; no submission."""
    from tri_dataset import EXPERIMENTS, register_tri, write_tri_raw

    from trainer.demo import main
    from trainer.maps.files import read_well_embeddings

    register_tri(monkeypatch)
    raw = write_tri_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["--data", str(raw), "--dataset", "tri", "--out", str(out), *TRI_JOB]) == 0
    report = json.loads((out / "report.json").read_text())
    held, plan = report["held_out"], json.loads((out / "plan.json").read_text())
    assert report["dataset"] == "tri" and plan["steps_pseudo"] == 0 and plan["finetune_share"] == 0
    assert not (out / "submission.csv").exists()
    folds = json.loads((out / "runs" / "single" / "folds.json").read_text())
    assert held["experiments"] == folds["val"] and set(folds["train"]).isdisjoint(folds["val"])
    wells = pd.read_csv(out / "held_out_predictions.csv")
    assert sorted(wells["experiment"].unique()) == folds["val"] and len(wells) == 16 * len(folds["val"])
    assert held["n_wells"] == len(wells) and held["accuracy"] == pytest.approx((wells.label == wells.predicted).mean())
    by_type = held["per_perturbation_type"]
    assert set(by_type) == {"trt", "negcon"} and by_type["negcon"]["n"] == 4 * len(folds["val"])
    assert by_type["trt"]["accuracy"] == pytest.approx(
        (wells[wells.kind == "trt"].label == wells[wells.kind == "trt"].predicted).mean())
    assert set(held["per_cell_type"]) <= {"U2OS", "A549"}
    emb = pd.read_parquet(out / "embeddings.parquet")
    assert len(emb) == emb["id_code"].nunique() == 16 * len(EXPERIMENTS)  # every well of every split, once
    assert {"dataset", "experiment", "plate", "well", "kind", "compound", "f0"} <= set(emb.columns)
    loaded = read_well_embeddings(out / "embeddings.parquet")
    assert loaded.features.shape[0] == len(emb) and np.isfinite(loaded.features).all()


@pytest.mark.parametrize("args, message", [
    (["--dataset", "tri"], r"--dataset tri: needs --data DIR"),
    (["--data", "{raw}", "--dataset", "trii"], r"--dataset: expected a registered data set, one of \[.*'tri'"),
])
def test_the_data_set_is_checked_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    import re

    from tri_dataset import register_tri

    from trainer.demo import main

    register_tri(monkeypatch)
    out = tmp_path / "out"
    args = [a.replace("{raw}", str(tmp_path)) for a in args]
    assert main(["--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (out / "store.zarr").exists()
