"""The image kind's encoders: timm backbones (and `small_convnet`) under a projection head."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import timm
from torch import nn

from ssl_toolkit.encoder import Encoder, ProjectionHead
from ssl_toolkit.kinds.images import convnet  # noqa: F401  (registers small_convnet with timm)


def _cifar_stem(model: nn.Module, in_chans: int) -> None:
    """Swap a ResNet stem (7x7 stride-2 conv + max-pool) for a 3x3 stride-1 conv, for inputs of ≤ 32 px."""
    conv1 = getattr(model, "conv1", None)
    if conv1 is None or not hasattr(model, "maxpool"):
        raise ValueError(
            f"model.cifar_stem=true needs a ResNet-style backbone (with conv1 and maxpool); "
            f"{type(model).__name__} has none. Set model.cifar_stem=false or pick a resnet*."
        )
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    else:  # deep stems (resnet*d, *t): keep the 3x3 convs, drop the first stride
        first = conv1[0]
        conv1[0] = nn.Conv2d(in_chans, first.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def create_backbone(
    name: str,
    *,
    in_chans: int = 3,
    cifar_stem: bool = False,
    pretrained: bool = False,
    backbone_args: dict | None = None,
) -> nn.Module:
    """A timm model without classifier, returning pooled features (N, `pooled_width(model)`).

    `backbone_args` go to `timm.create_model` and override the architecture's own, e.g.
    `{"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256]}` for a narrower, shallower resnet18.
    """
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ValueError(f"unknown backbone {name!r} (model.backbone){hint}")
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **(backbone_args or {})
        )
    except TypeError as error:  # an argument the architecture does not take
        raise ValueError(
            f"model.backbone_args={backbone_args} do not fit {name}: {error}; see the arguments of its "
            "class in timm (e.g. timm.models.resnet.ResNet)"
        ) from None
    if cifar_stem:
        _cifar_stem(model, in_chans)
    return model


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an Encoder; stored beside its weights."""

    backbone: str
    in_chans: int = 3
    cifar_stem: bool = False
    backbone_args: dict = field(default_factory=dict)
    proj_hidden_dim: int | None = None
    proj_dim: int = 128


def create_encoder(spec: EncoderSpec, *, pretrained: bool = False) -> Encoder:
    """The encoder `spec` describes: its timm backbone and a projection head sized to it."""
    backbone = create_backbone(
        spec.backbone,
        in_chans=spec.in_chans,
        cifar_stem=spec.cifar_stem,
        pretrained=pretrained,
        backbone_args=spec.backbone_args,
    )
    width = pooled_width(backbone)
    return Encoder(backbone, ProjectionHead(width, spec.proj_hidden_dim or width, spec.proj_dim))


def pooled_width(backbone: nn.Module) -> int:
    """The width of what a classifier-free timm model returns: `head_hidden_size` where the model has a
    pre-logits layer after its features (MobileNetV3: 1,024 of 288 features), else `num_features`."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features
