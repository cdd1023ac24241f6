"""cellio's thin trainer: config -> cellio loader -> DenseNet models -> a plain loop -> checkpoints.

    python -m trainer.train --config trainer/recipes/smoke_cpu.yaml data.store=PATH out=DIR

Modules: config (typed dataclasses, YAML, dotted overrides), models (registry), labels (sirna <-> column),
folds (held-out experiments), losses, checkpoint, features (cached stage-2 features), train (the loop).
The trainer uses cellio's public API only.
"""
