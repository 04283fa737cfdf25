"""`small_convnet`: a plain ConvNet for 28–32 px images, registered with timm for `model.backbone`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import nn


class SmallConvNet(nn.Module):
    """Stages of `depth` × (3×3 conv → BatchNorm → ReLU), a 2×2 max-pool between stages, global pooling.

    The first stage runs at full resolution (a ResNet stem would halve or quarter a 28 px image at once),
    which is what makes small grayscale images work in few epochs. With the default widths on 28 px images
    the stages see 28, 14, 7 and 3 px, a forward costs about 13 M multiply-adds (a CIFAR-stem ResNet-18:
    ~560 M) and `h` has 512 dimensions. Follows timm's model contract: `forward_features`,
    `forward_head(x, pre_logits=True)`, `num_features`, `reset_classifier`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 512),
        depth: int = 1,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if not widths or depth < 1:
            raise ValueError(f"small_convnet needs at least one stage and depth ≥ 1, got {widths}, {depth}")
        layers: list[nn.Module] = []
        channels = in_chans
        for index, width in enumerate(widths):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.num_features = channels
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def small_convnet(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """`SmallConvNet` through `timm.create_model("small_convnet", widths=..., depth=...)`."""
    if pretrained:
        raise ValueError("small_convnet has no pretrained weights; set pretrained=False")
    for timm_option in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_option, None)
    return SmallConvNet(**kwargs)
