"""The main job, end to end: data -> metadata -> ingest -> a plan from the data and the machine -> a joint
model (one validation fold held out) -> a pseudo-label stage from it (GPU plan; plan.pseudo_share) -> a short
fine-tuning run per cell type (GPU plan; plan.finetune_share) -> TTA predictions and embeddings of the held-out
and test wells (the fine-tuned models' joined into one more ensemble member) -> the inference chain
(calibration, ensemble, rotation inference, plate assignment, chosen by validation) -> OUT/submission.csv and
OUT/report.json (+ plots).

    python -m trainer.demo --out out/demo                          # on the embedded synthetic RxRx1 set
    python -m trainer.demo --data /path/to/rxrx1 --out out/rx      # a directory in the Kaggle layout
    python -m trainer.demo --data DIR --budget 120 plan.crop=512 optim.lr=3e-4   # overrides

The plan (trainer/job/plan.py) is printed before any training and saved as OUT/plan.json. On CUDA it trains the GPU
recipe on every local GPU, launching torchrun itself. Every step is resumable: a rerun skips what is complete
(synth marker, ingest journal, plan.json, training checkpoints, prediction files). `make demo DATA=... OUT=...
BUDGET=... RECIPE=...` calls this.
"""
from __future__ import annotations

from collections.abc import Sequence

from trainer.job.main import run_command, run_job
from trainer.job.options import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n\n")[0]
    return run_command("trainer.demo", lambda a: run_job(parse_args(a, description=description)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
