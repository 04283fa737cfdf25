"""Sequence backbones: a field embedder (one vector per event) followed by a GRU, a 1-D CNN or a
Transformer encoder, giving one vector `h` (N, D) per sequence; the same projection head as images.

`model.backbone` picks the architecture by name from `SEQUENCE_BACKBONES`; `model.backbone_args` are its
keyword arguments (e.g. `{hidden_size: 256}` for the GRU).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ssl_toolkit.encoder import Encoder, ProjectionHead
from ssl_toolkit.kinds.sequences.views import PaddedEvents

TRANSFORMER_MAX_LENGTH = 1024  # the learned positions of the transformer: model.backbone_args.max_length


class FieldEmbedder(nn.Module):
    """Each event → one vector: an embedding per categorical field, standardised numeric fields, joined.

    Numeric fields are standardised with the pretraining data's mean and std per field (stored in the
    encoder spec, so evaluation sees the same inputs). Output (B, T, `output_dim`).
    """

    def __init__(
        self,
        categorical: dict[str, int],
        numeric: dict[str, tuple[float, float]],
        embedding_dim: int = 16,
    ):
        super().__init__()
        self.embeddings = nn.ModuleDict(
            {name: nn.Embedding(codes, embedding_dim, padding_idx=0) for name, codes in categorical.items()}
        )
        self.numeric = list(numeric)
        stats = torch.tensor([numeric[name] for name in self.numeric], dtype=torch.float32).reshape(-1, 2)
        self.register_buffer("numeric_mean", stats[:, 0].clone())
        self.register_buffer("numeric_std", stats[:, 1].clamp_min(1e-6).clone())
        self.output_dim = embedding_dim * len(categorical) + len(self.numeric)
        if self.output_dim == 0:
            raise ValueError("a sequence encoder needs at least one field (data.categorical or data.numeric)")

    def forward(self, batch: PaddedEvents) -> torch.Tensor:
        parts = [embedding(batch.fields[name]) for name, embedding in self.embeddings.items()]
        if self.numeric:
            values = torch.stack([batch.fields[name].float() for name in self.numeric], dim=-1)
            parts.append(((values - self.numeric_mean) / self.numeric_std) * batch.mask[..., None])
        return torch.cat(parts, dim=-1)


def _masked_mean(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) → (B, D): the mean over the events that are there."""
    weights = mask.to(steps.dtype)[..., None]
    return (steps * weights).sum(1) / weights.sum(1).clamp_min(1)


class GRUBackbone(nn.Module):
    """CoLES's encoder: a GRU over the embedded events; `h` is its hidden state after the last event."""

    def __init__(self, embedder: FieldEmbedder, hidden_size: int = 256, num_layers: int = 1):
        super().__init__()
        self.embedder = embedder
        self.rnn = nn.GRU(embedder.output_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.num_features = hidden_size

    def forward(self, batch: PaddedEvents) -> torch.Tensor:
        # Over the padded batch, then each sequence's output at its last event: a forward GRU's output at
        # step t depends on steps ≤ t only, so the padding after it changes nothing. On the CPU this is
        # 2-3x faster per step than a packed sequence, whose backward runs step by step.
        outputs, _ = self.rnn(self.embedder(batch))
        last = (batch.lengths.clamp_min(1) - 1).to(outputs.device)
        return outputs[torch.arange(len(last), device=outputs.device), last]


class CNN1DBackbone(nn.Module):
    """1-D convolutions over time (same padding, ReLU), then the mean over the events."""

    def __init__(
        self, embedder: FieldEmbedder, channels: int = 256, num_layers: int = 3, kernel_size: int = 5
    ):
        super().__init__()
        self.embedder = embedder
        widths = [embedder.output_dim] + [channels] * num_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, padding=kernel_size // 2) for a, b in itertools.pairwise(widths)
        )
        self.num_features = channels

    def forward(self, batch: PaddedEvents) -> torch.Tensor:
        present = batch.mask[:, None, :].float()  # (B, 1, T)
        steps = self.embedder(batch).transpose(1, 2) * present
        for conv in self.convs:
            # Padding is zeroed after every layer, so it never leaks into a sequence's last events.
            steps = torch.relu(conv(steps)) * present
        return _masked_mean(steps.transpose(1, 2), batch.mask)


class TransformerBackbone(nn.Module):
    """A Transformer encoder over the embedded events (learned positions, padding masked), then the mean."""

    def __init__(
        self,
        embedder: FieldEmbedder,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = TRANSFORMER_MAX_LENGTH,
    ):
        super().__init__()
        self.embedder = embedder
        self.input = nn.Linear(embedder.output_dim, d_model)
        self.positions = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.max_length = max_length
        self.num_features = d_model

    def forward(self, batch: PaddedEvents) -> torch.Tensor:
        steps = self.input(self.embedder(batch))
        length = steps.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"a sequence of {length} events is longer than the transformer's max_length "
                f"{self.max_length}; set model.backbone_args.max_length or augment.cnt_max lower"
            )
        steps = steps + self.positions(torch.arange(length, device=steps.device))[None]
        mask = batch.mask
        return _masked_mean(self.encoder(steps, src_key_padding_mask=~mask), mask)


SEQUENCE_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "gru": GRUBackbone,
    "cnn1d": CNN1DBackbone,
    "transformer": TransformerBackbone,
}


@dataclass(frozen=True)
class SequenceEncoderSpec:
    """Everything needed to rebuild a sequence encoder; stored beside its weights."""

    backbone: str
    categorical: dict[str, int]  # field → number of codes, padding 0 included
    numeric: dict[str, list[float]]  # field → [mean, std] of the pretraining data
    embedding_dim: int = 16
    backbone_args: dict = field(default_factory=dict)
    proj_hidden_dim: int | None = None
    proj_dim: int = 128


def longest_sequence(spec: SequenceEncoderSpec) -> int | None:
    """The most events a sequence may have for `spec`'s backbone (the transformer's `max_length`, its number
    of learned positions), or None where any length goes (or the argument is one the build will refuse)."""
    if spec.backbone != "transformer":
        return None
    limit = spec.backbone_args.get("max_length", TRANSFORMER_MAX_LENGTH)
    return limit if isinstance(limit, int) else None


def create_sequence_encoder(spec: SequenceEncoderSpec) -> Encoder:
    """The encoder `spec` describes: field embedder, backbone, and a projection head sized to it."""
    if spec.backbone not in SEQUENCE_BACKBONES:
        close = difflib.get_close_matches(spec.backbone, list(SEQUENCE_BACKBONES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown sequence backbone {spec.backbone!r} (model.backbone); valid: "
            f"{', '.join(SEQUENCE_BACKBONES)}{hint}"
        )
    embedder = FieldEmbedder(
        spec.categorical, {name: tuple(stats) for name, stats in spec.numeric.items()}, spec.embedding_dim
    )
    try:
        backbone = SEQUENCE_BACKBONES[spec.backbone](embedder, **spec.backbone_args)
    except TypeError as error:
        raise ValueError(
            f"model.backbone_args={spec.backbone_args} do not fit {spec.backbone}: {error}"
        ) from None
    head = ProjectionHead(backbone.num_features, spec.proj_hidden_dim or backbone.num_features, spec.proj_dim)
    return Encoder(backbone, head)
