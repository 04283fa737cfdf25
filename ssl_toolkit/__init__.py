"""ssl_toolkit: self-supervised and contrastive representation learning at scale.

The names a user starts from, importable from the top level (each loads its module on first use, so
`import ssl_toolkit` stays quick):

- losses: `create_loss`, `loss_over_views`, `LOSSES`, `NTXentLoss`, `SupConLoss`, `ColesLoss`, ...
- views: `preset_views`, `ViewParams`, `PerImageViews`, `BatchViews`, `eval_transform`
- data: `create_dataset`, `DATASETS`
- encoders: `create_encoder`, `EncoderSpec`, `Encoder`, `load_encoder`, `save_encoder`, `TrainedEncoder`
- evaluation: `extract_features`, `evaluate_linear_probe`, `knn_scores`, `knn_top1`
- runs: `load_config`, `RunDirectory`, `DataKind`, `register_data_kind`

Pretraining itself is `ssl_toolkit.pretrain.pretrain(config)` (the module `accelerate launch -m
ssl_toolkit.pretrain` runs).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # module: the names it gives the top level
    "ssl_toolkit.losses": (
        "LOSSES create_loss loss_over_views NTXentLoss SupConLoss "
        "ColesLoss TripletLoss ContrastiveLoss SigmoidLoss ArcFaceLoss CrossEntropyLoss"
    ),
    "ssl_toolkit.kinds.images": (
        "BatchViews PerImageViews ViewParams eval_transform preset_views DATASETS create_dataset "
        "EncoderSpec create_encoder"
    ),
    "ssl_toolkit.encoder": "Encoder ProjectionHead",
    "ssl_toolkit.encoder_file": "TrainedEncoder load_encoder save_encoder",
    "ssl_toolkit.eval.features": "extract_features",
    "ssl_toolkit.eval.linear_probe": "evaluate_linear_probe",
    "ssl_toolkit.eval.knn": "knn_scores knn_top1",
    "ssl_toolkit.config": "load_config",
    "ssl_toolkit.run_dir": "RunDirectory",
    "ssl_toolkit.kinds": "DataKind register_data_kind",
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names.split()}

__all__ = ["__version__", *sorted(_MODULE_OF)]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'ssl_toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
