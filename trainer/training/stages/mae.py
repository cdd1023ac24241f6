"""train.stage=masked_autoencoding: the self-supervised objective of a masked-autoencoder model
(trainer/training/mae.py), with an online linear probe.

Each step hides a random share of every image's tokens and reconstructs their pixels (the loss the encoder learns
from: no label reaches it). Beside it the model's head learns to name the class from the encoder's features,
detached (an online linear probe, as self-supervised libraries monitor a run): the main job's
predictions, held-out accuracy and centroids keep working, and the logged accuracy says how much of the class the
self-supervised features carry. The probe's softmax obeys loss.within like every stage's.

The probe reads the mean of the visible tokens' encodings, which the reconstruction has already computed: encoding
every token again for it would double a CPU step (0.25 s of 0.6 s at batch 32, 56 px crops). The visible tokens
are a random quarter of the image's, so their mean estimates the mean over all of them that prediction and
embeddings use (`forward_features`; encoded there with more context, so the probe is close, not identical).
"""
from __future__ import annotations

import torch
from torch import nn

from cellio.errors import ConfigError

from .base import ModelForward, Stage, StageContext, StepOutput, model_inputs, within_classes

__all__ = ["MaskedAutoencoding"]


class _MaskedForward(ModelForward):
    """forward = (reconstruction loss, probe logits) from one call."""

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        loss, visible = self.model.masked_reconstruction(x)
        return loss, self.model.forward_head(visible.detach(), cell_type)


class MaskedAutoencoding(Stage):
    name = "masked_autoencoding"

    def configure(self, model: nn.Module) -> None:
        if not hasattr(model, "masked_reconstruction"):
            raise ConfigError(f"config key 'train.stage': masked_autoencoding trains a masked-autoencoder model "
                              f"(model.name=mae_vit_tiny), found {type(model).__name__}")

    def forward_module(self, model: nn.Module) -> nn.Module:
        return _MaskedForward(model)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor], ctx: StageContext) -> StepOutput:
        x, cell_type, target = model_inputs(batch, ctx)
        reconstruction, logits = net(x, cell_type)
        logits = within_classes(logits, batch, ctx)
        return StepOutput(reconstruction + ctx.loss_fn(logits, target), logits, target)
