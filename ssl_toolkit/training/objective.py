"""What one training step computes: the encoder and the loss as one module, and the step that runs it.

A step is plain (one forward and backward over the batch) or gradient-cached (`train.grad_cache_chunk`:
the whole batch's loss at the activation memory of one chunk); both return the loss, the batch's
embeddings z (for the logged batch statistics) and its features h (for the online probe), detached, after
the backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import nn

from ssl_toolkit.losses import loss_over_views
from ssl_toolkit.training.grad_cache import cached_backward

# (views, class labels or None) → (loss, embeddings z (B, D) and features h (B, F) of each view), the
# backward done.
TrainStep = Callable[
    [list[torch.Tensor], torch.Tensor | None], tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
]


class ContrastiveObjective(nn.Module):
    """Encoder and loss as one module, so that DDP also averages a loss's learnable parameters.

    Views are embedded in groups of equal shape (multi-crop has large and small ones); views of one shape
    share a forward pass, so BatchNorm sees all of them, as in SimCLR. `mode="embed"` returns the
    embeddings instead of the loss, and `mode="embed_with_features"` the embeddings z of each view followed
    by its features h: gradient caching embeds chunks through `forward`, so that DDP sees a forward before
    each backward.
    """

    def __init__(self, encoder: nn.Module, loss: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.loss = loss

    def forward(
        self, views: list[torch.Tensor], class_labels: torch.Tensor | None = None, mode: str = "loss"
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | list[torch.Tensor]:
        """The loss of the views (B, ...) of B samples, their embeddings z (B, D) and features h (B, F),
        both detached; with `class_labels` (B,), samples of a class are positives. With `mode="embed"`,
        the embeddings only; with `mode="embed_with_features"`, the embeddings then the features."""
        if mode not in ("loss", "embed", "embed_with_features"):
            raise ValueError(f"mode must be 'loss', 'embed' or 'embed_with_features', got {mode!r}")
        embeddings, features = self.embed_with_features(views)
        if mode == "embed":
            return embeddings
        if mode == "embed_with_features":
            return [*embeddings, *features]
        loss = self.loss_of(embeddings, class_labels)
        return loss, [z.detach() for z in embeddings], [h.detach() for h in features]

    def embed(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings z (B, D) of each view (B, ...), one forward per group of equal-shape views."""
        return self.embed_with_features(views)[0]

    def embed_with_features(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Embeddings z (B, D) and features h (B, F) of each view (B, ...), one forward per group of
        equal-shape views."""
        embeddings: list[torch.Tensor] = []
        features: list[torch.Tensor] = []
        first = 0
        while first < len(views):
            last = first
            while last + 1 < len(views) and views[last + 1].shape == views[first].shape:
                last += 1
            h, z = self.encoder(torch.cat(views[first : last + 1]))
            embeddings += z.chunk(last + 1 - first)
            features += h.chunk(last + 1 - first)
            first = last + 1
        return embeddings, features

    def loss_of(
        self, embeddings: list[torch.Tensor], class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of the embeddings (B, D) of each view; `class_labels` (B,) as in `forward`."""
        return loss_over_views(self.loss, embeddings, class_labels)


def plain_step(accelerator: Accelerator, objective: nn.Module) -> TrainStep:
    """One forward under autocast and one backward over the whole batch."""

    def step(views: list[torch.Tensor], class_labels: torch.Tensor | None):
        with accelerator.autocast():
            loss, embeddings, features = objective(views, class_labels)
        accelerator.backward(loss)
        return loss.detach(), embeddings, features

    return step


def grad_cached_step(accelerator: Accelerator, objective: nn.Module, chunk_size: int) -> TrainStep:
    """Gradient caching (`cached_backward`): embeddings chunk by chunk, the loss over the whole batch."""
    unwrapped = accelerator.unwrap_model(objective)

    def embed(chunk: list[torch.Tensor]) -> list[torch.Tensor]:
        # Through the (DDP) wrapper: DDP needs a forward before each backward. The features ride along as
        # outputs the loss does not use, so their cached gradient is None and nothing flows back from them.
        with accelerator.autocast():
            return objective(chunk, mode="embed_with_features")

    def step(views: list[torch.Tensor], class_labels: torch.Tensor | None):
        count = len(views)
        loss, outputs = cached_backward(
            embed,
            lambda outputs: unwrapped.loss_of(outputs[:count], class_labels),  # float32, no autocast
            views,
            chunk_size,
            loss_parameters=unwrapped.loss.parameters(),
            buffers=unwrapped.buffers(),
            backward=accelerator.backward,
            no_sync=lambda: accelerator.no_sync(objective),
        )
        return loss, outputs[:count], outputs[count:]

    return step


def train_step(accelerator: Accelerator, objective: nn.Module, grad_cache_chunk: int) -> TrainStep:
    """The plain step, or the gradient-cached one when `grad_cache_chunk` > 0."""
    if grad_cache_chunk:
        return grad_cached_step(accelerator, objective, grad_cache_chunk)
    return plain_step(accelerator, objective)
