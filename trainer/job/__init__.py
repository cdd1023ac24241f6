"""The main job (`python -m trainer.demo`): data -> ingest -> a plan -> training runs -> inference -> submission.

The one package that imports both `trainer.training` and `trainer.infer`; also the rehearsal and its meter.
"""
