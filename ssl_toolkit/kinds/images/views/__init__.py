"""View pipelines: SimCLR augmentations that turn one uint8 image into several normalised float views.

A preset (`preset_views`) gives one `ViewParams` per view. Two pipelines draw the same random parameters
from the same distributions with the same formulas and apply the same operations:

- `PerImageViews`: a dataset's per-item transform, for DataLoader workers: one uint8 (C, H, W) image in,
  a list of float views out.
- `BatchViews`: kornia on whole uint8 (B, C, H, W) batches on the batch's device (a GPU, or the CPU).

`eval_transform` is the deterministic transform of evaluation; `view_grid` draws views for a dashboard.
"""

from ssl_toolkit.kinds.images.views.batch import BatchViews, color_jitter_batch
from ssl_toolkit.kinds.images.views.evaluation import common_size_transform, eval_transform
from ssl_toolkit.kinds.images.views.functional import color_jitter, gaussian_blur
from ssl_toolkit.kinds.images.views.grid import view_grid
from ssl_toolkit.kinds.images.views.params import (
    DEVICES,
    GRAY_WEIGHTS,
    JITTER_OPS,
    PRESETS,
    ViewParams,
    preset_views,
    resolve_device,
)
from ssl_toolkit.kinds.images.views.per_image import PerImageViews

__all__ = [
    "DEVICES",
    "GRAY_WEIGHTS",
    "JITTER_OPS",
    "PRESETS",
    "BatchViews",
    "PerImageViews",
    "ViewParams",
    "color_jitter",
    "color_jitter_batch",
    "common_size_transform",
    "eval_transform",
    "gaussian_blur",
    "preset_views",
    "resolve_device",
    "view_grid",
]
