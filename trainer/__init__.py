"""cellio's thin trainer: config -> cellio loader -> DenseNet models -> a plain loop -> checkpoints -> the inference
chain -> submission.csv.

    python -m trainer.train --config trainer/recipes/smoke_cpu.yaml data.store=PATH out=DIR    # one training run
    python -m trainer.demo --out out/demo                                                       # the main job

Packages, each importing only those below it (tests/test_imports.py; docs/architecture.md): training/ (configs,
models, losses, stages, the loop, checkpoints), infer/ (predictions, aggregation, stacker, plate assignment, the
chain, report, submission), job/ (the main job: plan, runs, rehearsal). demo.py and train.py are the entry
modules. The trainer uses cellio's public API only.
"""
