"""Inference: checkpoints -> per-view logits -> per-well scores -> the inference chain -> submission.csv.

Builds on `trainer.training` (checkpoints, configs, the runtime); never imports `trainer.job`.
"""
