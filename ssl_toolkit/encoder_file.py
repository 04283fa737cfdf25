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

from ssl_toolkit.files import write_safetensors
from ssl_toolkit.kinds import DataKind, kind_by_name

FEATURES = ("backbone", "projection")  # h = f(x) and z = g(h)
REWRITE_HINT = (
    "write it again from the run's last checkpoint: rerun its `ssl-toolkit pretrain` command with "
    "train.resume=auto"
)


class EncoderFileError(ValueError):
    """An encoder file that cannot be read back; the message names it and how to get a good one."""


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
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    metadata = {
        "encoder_spec": json.dumps(asdict(spec) if is_dataclass(spec) else spec),
        "data_kind": json.dumps(kind),
        "preprocessing": json.dumps(preprocessing),
    }
    metadata.update({key: json.dumps(value) for key, value in (extra or {}).items()})
    write_safetensors(state, path, metadata)


def save_run_encoder(kind: DataKind, encoder: nn.Module, path: str | Path, **extra) -> None:
    """Write a run's `encoder` with `kind`'s spec and preprocessing, the dataset's name and `extra` (e.g.
    the step), so that `load_encoder` rebuilds it and its evaluation transform without the config."""
    preprocessing = kind.preprocessing()
    save_encoder(
        encoder,
        path,
        spec=kind.encoder_spec(),
        kind=kind.name,
        preprocessing=preprocessing,
        extra={**extra, "data": {"name": kind.config.data.name, **preprocessing}},
    )


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
        EncoderFileError: the file is not an encoder file that this version can read (truncated, corrupt,
            or weights that do not fit the architecture it describes).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder weights at {path}; a finished pretraining run writes them")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    except Exception as error:  # truncated, overwritten, not safetensors: the fix is the same
        raise _unreadable(path, error) from error
    kind = metadata.pop("data_kind", None)
    if kind is None:
        raise _unreadable(path, ValueError("it names no data kind, as files of ssl_toolkit before 0.1 did"))
    if not isinstance(kind, str):
        raise _unreadable(path, TypeError(f"data_kind is {kind!r}, not a name"))
    kind_class = kind_by_name(kind)  # an unregistered kind is no fault of the file: its message says so
    try:
        preprocessing = metadata.pop("preprocessing")
        spec = kind_class.spec_from_dict(metadata.pop("encoder_spec"))
        encoder = kind_class.build_encoder(spec)
        encoder.load_state_dict(load_file(str(path)))
    except Exception as error:  # metadata or weights that do not describe a model this kind builds
        raise _unreadable(path, error) from error
    return TrainedEncoder(encoder.eval(), spec, kind, preprocessing, metadata)


def _unreadable(path: Path, error: Exception) -> EncoderFileError:
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
    return EncoderFileError(f"{path} is not a readable encoder file ({reason}); {REWRITE_HINT}")
