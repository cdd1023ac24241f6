"""Model registry: N-channel DenseNets, per-channel DenseNet extractors with a fusion head.

    model = create_model("densenet121", num_classes=1139, in_chans=6, num_cell_types=4,
                         pretrained="densenet121-a639ec97.pth")
    list_models()  # ['densenet121', 'densenet161', 'densenet201', 'densenet_tiny', 'perchannel_densenet121', ...]

Every model exposes `num_features`, `forward_features(x, cell_type=None) -> (B, F)`,
`forward_head(feats, cell_type=None) -> (B, C)` and `forward(x, cell_type=None) -> (B, C)`; `cell_type` is the
int64 index into the layout's `cell_types` the loader yields; `in_chans` and `num_cell_types` come from the data
(trainer.training.checkpoint.DataShape: the store's channels, its layout's cell types), never from a data set's
constants. Unlike timm, `forward_features` returns the POOLED
feature vector (the embedding), not the feature map: the fusion head, the stage-2 feature cache and exported
embeddings all work on one vector per site, and a per-channel model has one map per channel, not one. The map of
a DenseNet is `model.features(x)`. The head (`ClassifierHead`) can concatenate the
cell type as a one-hot before the classifier (what the winners did) and/or keep one head per cell type.

Pretrained weights come from a local torchvision DenseNet file only (hubs are unreachable on training hosts);
a missing file is an error, never a silent random init. The RGB stem is adapted to N channels the way timm's
`adapt_input_conv` does it: RGB filters repeated and scaled by 3/N, so a grey image gives the same response.
"""
from __future__ import annotations

import difflib
import functools
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cellio.errors import ConfigError

from .heads import ClassifierHead
from .mae import MAE_ARCHS, MaskedAutoencoderViT

__all__ = [
    "create_model", "list_models", "check_model_name", "register_model", "ClassifierHead", "DenseNetClassifier",
    "PerChannelFusion", "ConvNetMicro", "MaskedAutoencoderViT", "adapt_input_conv", "load_densenet_weights",
    "is_perchannel", "DENSENET_ARCHS",
    "feature_stages",
]

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# torchvision DenseNet shapes: (growth_rate, block_config, num_init_features)
DENSENET_ARCHS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet201": (32, (6, 12, 48, 32), 64),
    # small variant for CPU recipes and tests (~24 img/s at 224 px on 2 cores, see LOADERS.md)
    "densenet_tiny": (12, (4, 4, 4), 32),
}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory `fn(*, num_classes, in_chans, num_cell_types, pretrained, **kw)` under its name."""
    if fn.__name__ in _REGISTRY:
        raise ConfigError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str, key: str = "model.name") -> None:
    """ConfigError naming `key` unless `name` is a registered model or `timm:<a timm model>` (checked before any
    work, and by create_model)."""
    from .timm_models import check_timm_name, is_timm_name

    if is_timm_name(name):
        check_timm_name(name, key)
        return
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config key {key!r}: unknown model {name!r}{hint}; registered: {', '.join(list_models())}, "
                          "or timm:<name> for any timm model")


def create_model(name: str, *, num_classes: int, in_chans: int, num_cell_types: int,
                 pretrained: str | Path | None = None, **kw: Any) -> nn.Module:
    """Build a registered model for `in_chans` input channels and `num_cell_types` cell types (the head's
    cell-type input); `pretrained` is a local weights file (None = random init)."""
    from .timm_models import TimmClassifier, is_timm_name

    check_model_name(name)
    factory = functools.partial(TimmClassifier, name) if is_timm_name(name) else _REGISTRY[name]
    if num_classes < 1:
        raise ConfigError(f"create_model({name!r}): expected num_classes >= 1, found {num_classes}")
    try:
        return factory(num_classes=num_classes, in_chans=in_chans, num_cell_types=num_cell_types,
                       pretrained=pretrained, **kw)
    except TypeError as exc:  # an unknown model.kwargs key
        raise ConfigError(f"model {name!r}: invalid model.kwargs {sorted(kw)}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# pretrained weights


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """RGB conv weights (O, 3, k, k) -> (O, in_chans, k, k), as timm does it.

    1 channel: the RGB filters summed. N channels: the RGB filters repeated to N and scaled by 3/N. For 1 and
    multiples of 3 (6 for RxRx1) the response to a grey image (all channels equal) is unchanged.
    """
    dtype = weight.dtype
    weight = weight.float()
    out_ch, in_ch, kh, kw = weight.shape
    if in_ch != 3:
        raise ConfigError(f"adapt_input_conv: expected RGB weights with 3 input channels, found {in_ch}")
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        repeat = int(math.ceil(in_chans / 3))
        weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3.0 / float(in_chans))
    return weight.to(dtype)


# old torchvision files name DenseNet layers 'norm.1'; current modules use 'norm1' (torchvision does the same fix)
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def load_densenet_weights(features: nn.Module, path: str | Path, in_chans: int) -> None:
    """Load a local torchvision DenseNet state dict into `features` (a DenseNet `.features`), stem adapted."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'model.pretrained': weights file {str(path)!r} does not exist. Model hubs "
                          "are not used: download the torchvision DenseNet .pth on a host with internet, copy it "
                          "here, or set model.pretrained=null to train from random init")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear error
        raise ConfigError(f"model.pretrained {str(path)!r}: not a readable torch state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    feats: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        m = _OLD_KEY.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith("features."):
            feats[key.removeprefix("features.")] = value
    if not feats:
        raise ConfigError(f"model.pretrained {str(path)!r}: expected a torchvision DenseNet state dict with "
                          f"'features.*' keys, found keys like {list(state)[:5]}")
    stem = feats.get("conv0.weight")
    if stem is not None and stem.shape[1] == 3 and in_chans != 3:
        feats["conv0.weight"] = adapt_input_conv(in_chans, stem)
    own = features.state_dict()
    wrong = [k for k, v in feats.items() if k in own and own[k].shape != v.shape]
    # files older than torch 0.4.1 lack BatchNorm's num_batches_tracked; load_state_dict fills it in
    missing = [k for k in own if k not in feats and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in feats if k not in own]
    if wrong or missing or unexpected:
        detail = (f"shape mismatch {wrong[:3]}" if wrong else
                  f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
        raise ConfigError(f"model.pretrained {str(path)!r} does not fit this architecture ({detail}; "
                          f"{len(wrong)} mismatched, {len(missing)} missing, {len(unexpected)} unexpected keys) - "
                          "is it the weights of another DenseNet depth?")
    features.load_state_dict(feats, strict=False)  # every key checked above; strict would re-flag the counters
    log.info("loaded pretrained DenseNet weights from %s (stem adapted to %d channels)", path, in_chans)


# ----------------------------------------------------------------------------------------------------------------
# backbones


def _densenet_features(arch: str, in_chans: int, pretrained: str | Path | None, **kw: Any) -> tuple[nn.Module, int]:
    """torchvision DenseNet `.features` with an `in_chans` stem; returns (features, number of output features)."""
    from torchvision.models.densenet import DenseNet

    growth, blocks, init = DENSENET_ARCHS[arch]
    net = DenseNet(growth_rate=growth, block_config=blocks, num_init_features=init, **kw)
    features = net.features
    old = features.conv0
    features.conv0 = nn.Conv2d(in_chans, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                               padding=old.padding, bias=False)
    nn.init.kaiming_normal_(features.conv0.weight)
    if pretrained is not None:
        load_densenet_weights(features, pretrained, in_chans)
    return features, net.classifier.in_features


def _pool(fmap: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(F.relu(fmap), 1).flatten(1)


class _PooledConvNet(nn.Module):
    """`features` (a conv trunk) -> global average pool -> `head` (ClassifierHead); subclasses build both."""

    features: nn.Module
    head: nn.Module

    def forward_features(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return _pool(self.features(x))

    def forward_head(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(feats, cell_type)

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, cell_type), cell_type)


class DenseNetClassifier(_PooledConvNet):
    """A DenseNet with an `in_chans` stem, global average pooling and a `ClassifierHead`."""

    def __init__(self, arch: str, *, num_classes: int, in_chans: int, num_cell_types: int,
                 pretrained: str | Path | None = None, drop_rate: float = 0.0, memory_efficient: bool = False,
                 **head_kw: Any):
        super().__init__()
        self.arch = arch
        self.in_chans = in_chans
        self.features, self.num_features = _densenet_features(arch, in_chans, pretrained, drop_rate=drop_rate,
                                                              memory_efficient=memory_efficient)
        self.head = ClassifierHead(self.num_features, num_classes, num_cell_types=num_cell_types, **head_kw)


class PerChannelFusion(nn.Module):
    """One 1-channel DenseNet per image channel (`in_chans` of them), their features fused by an MLP head (the
    two-stage plan).

    `extractors[i]` sees channel i only and has its own linear classifier `channel_heads[i]` for stage 1
    (`forward_channels`). `forward_features` concatenates the `in_chans` pooled feature vectors (6 x 1024 for
    DenseNet-121 on RxRx1) and, with `intensity_stats`, each channel's mean and std (2 x in_chans values); `forward_head` adds the
    cell-type one-hot and runs the fusion MLP. Extractors and head live in one module, so one checkpoint holds the
    whole two-stage model.
    """

    def __init__(self, arch: str, *, num_classes: int, in_chans: int, num_cell_types: int,
                 pretrained: str | Path | None = None, intensity_stats: bool = True, hidden: int = 512,
                 dropout: float = 0.2, memory_efficient: bool = False, **head_kw: Any):
        super().__init__()
        self.arch = arch
        self.in_chans = in_chans
        self.intensity_stats = intensity_stats
        extractors, heads = [], []
        for _ in range(in_chans):
            feats, width = _densenet_features(arch, 1, pretrained, memory_efficient=memory_efficient)
            extractors.append(feats)
            heads.append(nn.Linear(width, num_classes))
        self.extractors = nn.ModuleList(extractors)
        self.channel_heads = nn.ModuleList(heads)
        self.num_channel_features = width
        self.num_features = in_chans * width + (2 * in_chans if intensity_stats else 0)
        self.head = ClassifierHead(self.num_features, num_classes, num_cell_types=num_cell_types, hidden=hidden,
                                   dropout=dropout, **head_kw)

    def channel_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, per-channel features)."""
        if x.shape[1] != self.in_chans:
            raise ConfigError(f"{self.arch} per-channel model: expected {self.in_chans} input channels, "
                              f"found {x.shape[1]}")
        return torch.stack([_pool(ext(x[:, i:i + 1])) for i, ext in enumerate(self.extractors)], dim=1)

    def forward_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1: each extractor's own logits, (B, C, num_classes)."""
        feats = self.channel_features(x)
        return torch.stack([h(feats[:, i]) for i, h in enumerate(self.channel_heads)], dim=1)

    def forward_features(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.channel_features(x).flatten(1)
        if self.intensity_stats:
            xf = x.float().flatten(2)
            feats = torch.cat([feats, xf.mean(-1).to(feats.dtype), xf.std(-1).to(feats.dtype)], dim=1)
        return feats

    def forward_head(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(feats, cell_type)

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, cell_type), cell_type)


# ----------------------------------------------------------------------------------------------------------------
# registered factories: one per (family, architecture), all with create_model's signature


def _register_family(cls: type[nn.Module], names: dict[str, str], shapes: dict[str, tuple] = DENSENET_ARCHS,
                     source: str = "torchvision's") -> None:
    """One registered factory per name: `cls(arch, **kw)` for the name's arch, whose shape `shapes` gives."""
    for name, arch in names.items():
        factory = functools.partial(cls, arch)
        factory.__name__ = name  # type: ignore[attr-defined]  (register_model keys on __name__)
        factory.__doc__ = f"{cls.__name__} on {source} {arch} shape {shapes[arch]}."
        register_model(factory)


_register_family(DenseNetClassifier, {arch: arch for arch in DENSENET_ARCHS})
_register_family(PerChannelFusion, {"perchannel_densenet121": "densenet121", "perchannel_tiny": "densenet_tiny"})
# the self-supervised model (trainer/training/mae.py; trained by train.stage=masked_autoencoding)
_register_family(MaskedAutoencoderViT, {arch: arch for arch in MAE_ARCHS}, MAE_ARCHS,
                 "trainer/training/mae.py's")


class ConvNetMicro(_PooledConvNet):
    """Two strided 3x3 convolutions (BatchNorm, ReLU), global average pooling and a `ClassifierHead`: almost no
    compute per view, for rehearsing the whole job at RxRx1's real cardinality on tiny images (trainer.job.rehearse)
    and for smoke runs. Not a model to learn RxRx1 with."""

    def __init__(self, *, num_classes: int, in_chans: int, num_cell_types: int,
                 pretrained: str | Path | None = None, width: int = 8, **head_kw: Any):
        super().__init__()
        if pretrained is not None:
            raise ConfigError("convnet_micro has no pretrained weights (model.pretrained must be null)")
        self.in_chans, self.num_features = in_chans, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.head = ClassifierHead(self.num_features, num_classes, num_cell_types=num_cell_types, **head_kw)


def convnet_micro(**kw: Any) -> nn.Module:
    """ConvNetMicro: two strided convolutions, for rehearsals and smoke runs at tiny image sizes."""
    return ConvNetMicro(**kw)


register_model(convnet_micro)


def _densenet_stages(features: nn.Module) -> list[nn.Module]:
    return [m for name, m in features.named_children() if name.startswith("denseblock")]


def feature_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The model's stages, shallow to deep: each entry lists the modules whose outputs together are that stage's
    feature maps (one module; a per-channel model: one per channel extractor, in channel order). DenseNets: the
    dense blocks (a block's output, before the transition that halves it); timm models: the modules timm's
    `feature_info` names. `forward_features` pools what follows the last stage; trainer.infer.embed pools an
    earlier one (`layer="penultimate"`)."""
    from .timm_models import TimmClassifier, timm_stages

    if hasattr(model, "feature_stages"):  # a model that names its own (trainer/training/mae.py)
        return model.feature_stages()
    if isinstance(model, PerChannelFusion):
        per_channel = [_densenet_stages(ext) for ext in model.extractors]
        return [list(level) for level in zip(*per_channel)]
    if isinstance(model, DenseNetClassifier):
        return [[m] for m in _densenet_stages(model.features)]
    if isinstance(model, TimmClassifier):
        return [[m] for m in timm_stages(model.backbone)]
    return []


def is_perchannel(model: nn.Module) -> bool:
    """True for models with per-channel extractors (they support stages perchannel_stage1/fusion_stage2)."""
    return isinstance(model, PerChannelFusion)
