"""Training stages: one object per train.stage, which the loop (trainer/training/loop.py) calls; the loop itself has
no stage-specific branch. The contract and the default stage are in base.py (mae.py: the self-supervised one); a
new training mode is one new class (a module of its own here) registered in `_STAGES`.
"""
from __future__ import annotations

from typing import Callable

from cellio.errors import ConfigError

from ..config import Config
from .base import Stage, StageContext, StageUpdate, StepOutput
from .mae import MaskedAutoencoding
from .perchannel import PerChannelStage1, fusion_stage
from .pseudo import Labeller, PseudoLabel

__all__ = ["StageContext", "StageUpdate", "StepOutput", "Stage", "Labeller", "create_stage"]

# train.stage -> the stage it builds (config.STAGES lists these names); the labeller is for pseudo_label only
_STAGES: dict[str, Callable[[Config, Labeller | None], Stage]] = {
    "single": lambda cfg, labeller: Stage(),
    "perchannel_stage1": lambda cfg, labeller: PerChannelStage1(),
    "fusion_stage2": lambda cfg, labeller: fusion_stage(cfg),
    "pseudo_label": lambda cfg, labeller: PseudoLabel(labeller),
    "masked_autoencoding": lambda cfg, labeller: MaskedAutoencoding(),
}


def create_stage(cfg: Config, labeller: Labeller | None = None) -> Stage:
    """The stage object for train.stage (for fusion_stage2 also train.freeze_extractors / cache_features; for
    pseudo_label the `labeller` that chooses its labels, trainer.training.stages.pseudo)."""
    factory = _STAGES.get(cfg.train.stage)
    if factory is None:
        raise ConfigError(f"config key 'train.stage': unknown stage {cfg.train.stage!r}; expected one of "
                          f"{', '.join(_STAGES)}")
    return factory(cfg, labeller)
