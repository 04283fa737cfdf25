"""Images: the registered image datasets (`datasets/`), SimCLR views (`views/`), timm backbones and
`small_convnet` (`backbones.py`, `convnet.py`), and `ImageKind`, the seam the engine reaches them through.

The names below are the kind's public face (the package's top level re-exports them); the engine itself
knows images only as a `DataKind`.
"""

from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
from ssl_toolkit.kinds.images.datasets import DATASETS, create_dataset
from ssl_toolkit.kinds.images.kind import ImageKind
from ssl_toolkit.kinds.images.views import BatchViews, PerImageViews, ViewParams, eval_transform, preset_views

__all__ = [
    "DATASETS",
    "BatchViews",
    "EncoderSpec",
    "ImageKind",
    "PerImageViews",
    "ViewParams",
    "create_dataset",
    "create_encoder",
    "eval_transform",
    "preset_views",
]
