"""Any timm backbone as a trainer model: `model.name=timm:<name>` (e.g. `timm:resnet18`, `timm:convnext_nano`).

    model = create_model("timm:resnet18", num_classes=1139, in_chans=6, num_cell_types=4,
                         pretrained="resnet18.a1_in1k.safetensors")     # a local file, or None (random init)

timm builds the backbone for the data's channel count without its classifier (`num_classes=0`: its forward gives
the pooled feature vector, `num_features` wide), and our `ClassifierHead` classifies it, so a timm model has the
same interface as the DenseNets (`forward(x, cell_type)`, pooled `forward_features`, `forward_head`,
`num_features`) and the same cell-type input. Pretrained weights come from a local file only, through timm's
documented override of a model's pretrained config (`pretrained_cfg_overlay=dict(file=PATH)`): timm reads the
file (.pth, .bin or .safetensors), adapts the RGB stem to the data's channels (`adapt_input_conv`, as
models.adapt_input_conv does for the DenseNets) and drops the ImageNet classifier. No hub is contacted: a missing
file is an error, never a download or a silent random init.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellio.errors import ConfigError, MissingDependencyError

from .heads import ClassifierHead

__all__ = ["PREFIX", "is_timm_name", "check_timm_name", "TimmClassifier", "timm_stages"]

log = logging.getLogger(__name__)

PREFIX = "timm:"


def is_timm_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError("timm", "train", "timm backbones (model.name=timm:<name>)") from exc
    return timm


def check_timm_name(name: str, key: str = "model.name") -> str:
    """The timm architecture named by `timm:<arch>`; ConfigError naming `key` when timm has no such model."""
    arch = str(name)[len(PREFIX):]
    timm = _timm()
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(PREFIX + c for c in close)}?)" if close else ""
        raise ConfigError(f"config key {key!r}: timm has no model {arch!r}{hint}; `python -c \"import timm; "
                          f"print(timm.list_models())\"` lists them (timm {timm.__version__})")
    return arch


def timm_stages(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose outputs timm's `feature_info` lists (its stages, shallow to deep); [] when the model has
    none."""
    info = getattr(backbone, "feature_info", None) or []
    names = [i["module"] for i in info if isinstance(i, dict) and i.get("module")]
    return [backbone.get_submodule(n) for n in dict.fromkeys(names)]


class TimmClassifier(nn.Module):
    """A timm backbone (no classifier of its own) -> its pooled features -> `ClassifierHead`."""

    def __init__(self, name: str, *, num_classes: int, in_chans: int, num_cell_types: int,
                 pretrained: str | Path | None = None, timm_kwargs: dict[str, Any] | None = None,
                 **head_kw: Any):
        super().__init__()
        self.arch = check_timm_name(name)
        self.in_chans = in_chans
        kwargs: dict[str, Any] = dict(timm_kwargs or {})
        if pretrained is not None:
            path = Path(pretrained)
            if not path.is_file():
                raise ConfigError(f"config key 'model.pretrained': weights file {str(path)!r} does not exist. Model "
                                  f"hubs are not used: download the {self.arch} weights (.pth/.safetensors) on a "
                                  "host with internet, copy them here, or set model.pretrained=null")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        try:
            self.backbone = _timm().create_model(self.arch, pretrained=pretrained is not None, in_chans=in_chans,
                                                 num_classes=0, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:  # an unreadable file, weights of another architecture
            raise ConfigError(f"model {PREFIX}{self.arch}: cannot build it"
                              f"{f' with weights {str(pretrained)!r}' if pretrained else ''}: {exc}") from None
        if pretrained is not None:
            log.info("loaded pretrained %s weights from %s (stem adapted to %d channels)", self.arch, pretrained,
                     in_chans)
        self.num_features = int(self.backbone.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, num_cell_types=num_cell_types, **head_kw)

    def forward_features(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x)  # num_classes=0: timm's forward ends in its pooled pre-logits

    def forward_head(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(feats, cell_type)

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, cell_type), cell_type)
