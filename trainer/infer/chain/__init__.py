"""The inference chain: one split's steps (steps.py), the choice of the submitted step (select.py), both splits and
the files they write (run.py), the command line (__main__.py, `python -m trainer.infer.chain`).
"""
from __future__ import annotations

from trainer.infer.chain.run import ChainInputs, ChainResult, run_chain, wells_of
from trainer.infer.chain.select import choose_submission, rank_steps
from trainer.infer.chain.steps import (STEP_ORDER, Calibration, Meter, StepResults, fit_calibration, inference_steps,
                                       members_of, no_meter, rotation_sources)

__all__ = ["ChainInputs", "ChainResult", "run_chain", "wells_of", "choose_submission", "rank_steps", "STEP_ORDER",
           "Calibration", "Meter", "StepResults", "fit_calibration", "inference_steps", "members_of", "no_meter",
           "rotation_sources"]
