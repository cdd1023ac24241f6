"""Training: a config -> cellio loaders -> a model -> the plain loop (loop.py) -> checkpoints.

Nothing here imports `trainer.infer` or `trainer.job` (tests/test_imports.py): a training stage that needs
predictions (the pseudo-label stage) is handed a labeller by whoever starts the run.
"""
