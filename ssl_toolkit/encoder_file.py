"""The encoder file: trained weights with everything needed to rebuild the model and feed it new inputs.

One safetensors file holds the encoder's state dict; its metadata holds the data kind, the kind's encoder
spec (the architecture), the preprocessing (for images: size, channels, mean, std) and whatever the
writer adds (the step, the dataset). `load_encoder` returns a `TrainedEncoder` that embeds new inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FEATURES = ("backbone", "projection")  # h = f(x) and z = g(h)


def save_encoder(
    encoder: nn.Module,
    path: str | Path,
    *,
    spec: Any,
    kind: str,
    preprocessing: dict,
    extra: dict | None = None,
) -> None:
    """Write the weights, `spec` (a dataclass or a dict), kind, preprocessing and `extra`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    metadata = {
        "encoder_spec": json.dumps(asdict(spec) if is_dataclass(spec) else spec),
        "data_kind": json.dumps(kind),
        "preprocessing": json.dumps(preprocessing),
    }
    metadata.update({key: json.dumps(value) for key, value in (extra or {}).items()})
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


@dataclass
class TrainedEncoder:
    """A trained encoder, rebuilt from its file, and what it needs to embed new inputs.

    Attributes:
        encoder: the module `inputs → (h, z)`, in eval mode.
        spec: the architecture, as the data kind describes it (e.g. `EncoderSpec` for images).
        kind: the data kind's name, e.g. "image".
        preprocessing: what turns a raw input into the encoder's input (images: image_size, channels,
            mean, std).
        metadata: everything else the writer stored (e.g. `step`, `data`).
    """

    encoder: nn.Module
    spec: Any
    kind: str
    preprocessing: dict
    metadata: dict

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def transform(self) -> Callable:
        """The evaluation transform of one raw input (for images: a PIL image or uint8 (C, H, W) tensor)."""
        from ssl_toolkit.kinds import kind_by_name

        return kind_by_name(self.kind).evaluation_transform(self.preprocessing)

    @torch.no_grad()
    def embed(self, inputs: torch.Tensor, features: str = "backbone") -> torch.Tensor:
        """Features (B, D) of a batch of transformed inputs: `h` ("backbone") or `z` ("projection")."""
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.encoder.eval()
        h, z = self.encoder(inputs)
        return h if features == "backbone" else z


def load_encoder(path: str | Path) -> TrainedEncoder:
    """Rebuild the encoder written by `save_encoder` (or by pretraining) at `path`.

    Raises:
        FileNotFoundError: there is no file at `path`.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ssl_toolkit.kinds import kind_by_name

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder weights at {path}; a finished pretraining run writes them")
    with safe_open(str(path), framework="pt") as handle:
        metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    kind = metadata.pop("data_kind", "image")  # files from before data kinds held images
    preprocessing = metadata.pop("preprocessing", None) or _image_preprocessing(metadata)
    kind_class = kind_by_name(kind)
    spec = kind_class.spec_from_dict(metadata.pop("encoder_spec"))
    encoder = kind_class.build_encoder(spec)
    encoder.load_state_dict(load_file(str(path)))
    return TrainedEncoder(encoder.eval(), spec, kind, preprocessing, metadata)


def _image_preprocessing(metadata: dict) -> dict:
    """The preprocessing of an image encoder file that predates the preprocessing entry."""
    data = metadata.get("data", {})
    mean = data.get("mean")
    return {"image_size": None, "channels": len(mean) if mean else None, "mean": mean, "std": data.get("std")}
