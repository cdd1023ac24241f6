"""The rehearsal (python -m trainer.job.rehearse) at a reduced real layout: the main job's whole step chain with the
per-step table; and the meter it is timed with."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

import cellio
from trainer.infer.predict import load_predictions
from trainer.job.meter import StepMeter
from trainer.job.options import Overrides
from trainer.job.rehearse import RehearsalOptions, rehearse

# Two train experiments (one held out for validation) and one test experiment of the real layout, 8 px.
EXPERIMENTS = ["HUVEC-01", "RPE-01", "HUVEC-17"]
STEPS = ["synth (cellio synth --layout rxrx1)", "metadata", "ingest", "plan", "train: single stage",
         "train: pseudo-label stage", "predict: validation", "predict: test", "embeddings",
         "validation: stacker (cross-fit + fit)", "validation: calibration, ensemble weights",
         "validation: aggregation", "validation: plate assignment", "test: aggregation", "test: stacker",
         "test: ensemble", "test: plate assignment", "submission", "loader epoch (training loader, no model)",
         "validate submission"]


def test_the_rehearsal_runs_the_whole_job_on_a_reduced_real_layout(tmp_path):
    out = tmp_path / "r"
    summary = rehearse(RehearsalOptions(out, size=8, experiments=EXPERIMENTS, tta="center", dihedral=True,
                                        steps_single=4, steps_pseudo=4, steps_finetune=4, batch=64, workers=2,
                                        overrides=Overrides.parse(["plan.pseudo_rounds=1"])))
    names = [r["step"] for r in summary["steps"]]
    assert [s for s in STEPS if s not in names] == []
    # the one train cell type outside the held-out fold is fine-tuned; the fine-tuned member covers every test view
    # (the joint model's rows for the cell types without a fine-tuned model)
    assert sum(n.startswith("train: fine-tune ") for n in names) == 1
    tuned = load_predictions(out / "job" / "predictions" / "finetune_test.npz")
    joint = load_predictions(out / "job" / "predictions" / "model_test.npz")
    assert sorted(zip(tuned.index, tuned.view)) == sorted(zip(joint.index, joint.view))
    # the embeddings file names the checkpoint it came from: a rerun after retraining does not reuse it
    with np.load(out / "job" / "predictions" / "embeddings.npz") as z:
        assert str(z["checkpoint"]) == joint.meta["checkpoint"]
    assert all(r["seconds"] >= 0 and r["peak_rss"] > 0 for r in summary["steps"])
    plan = json.loads((out / "job" / "plan.json").read_text())
    assert (plan["model"], plan["crop"], plan["eval_tta"], plan["dihedral"]) == ("convnet_micro", 8, "center", True)

    sample = pd.read_csv(out / "raw" / "sample_submission.csv")
    sub = pd.read_csv(out / "job" / "submission.csv")
    assert summary["data"]["submission_rows"] == len(sample) == len(sub) > 1000
    assert sub["id_code"].tolist() == sample["id_code"].tolist()
    cellio.validate_submission(out / "job" / "submission.csv", out / "raw" / "sample_submission.csv")

    # every test treatment site, each of the 8 dihedral views, streamed to disk beside the .npz
    preds = load_predictions(out / "job" / "predictions" / "model_test.npz")
    assert len(preds) == 2 * len(sample) * 8 and len(np.unique(preds.index)) == 2 * len(sample)
    assert (out / "job" / "predictions" / "model_test.logits.npy").is_file()
    sizes = {f["path"]: f["bytes"] for f in summary["files"]}
    assert sizes["job/predictions/model_test.logits.npy"] > 0 and sizes["job/submission.csv"] > 0
    table = (out / "rehearsal.md").read_text()
    assert all(f"| {s} |" in table or f";{s} |" in table for s in STEPS)


def test_a_rerun_keeps_the_measurement_of_the_step_that_did_the_work(tmp_path):
    out = tmp_path / "r"
    opts = RehearsalOptions(out, size=8, experiments=["U2OS-05"], workers=2, synth_only=True)
    rehearse(opts)
    rehearse(opts)  # the set is reused: the first run's synth measurement stays the only one
    lines = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == ["synth (cellio synth --layout rxrx1)"]
    assert lines[0]["seconds"] > 0


def test_the_meter_sees_a_step_allocate_and_folds_nested_steps_into_their_parent():
    meter = StepMeter(interval=0.05)
    with meter("outer"):
        with meter("inner"):
            big = np.ones(200 * 2**20 // 8)   # 200 MiB, every page touched
            del big
        with meter("after"):
            pass
    rec = {r["step"]: r for r in meter.records}
    assert rec["inner"]["depth"] == 1 and rec["outer"]["depth"] == 0
    assert rec["inner"]["peak_rss"] - rec["after"]["peak_rss"] > 150 * 2**20
    assert rec["outer"]["peak_rss"] >= rec["inner"]["peak_rss"]
