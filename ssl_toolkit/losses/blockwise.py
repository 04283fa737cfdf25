"""The scaffold every blockwise loss stands on: anchors in row blocks, the gradient computed in the forward.

A batch loss over n anchors and T candidates needs, per anchor, its similarities to every candidate.
Materialising the (n, T) similarities and letting autograd keep them is what makes other libraries
exhaust memory at a few thousand embeddings. A blockwise loss instead walks over the anchors in row blocks
(`row_blocks`), so memory grows as block·T, and since every quantity the gradient needs is at hand while a
block is computed, it adds that block's gradient with respect to the anchors, the candidates and its own
learnable parameters into `Gradients` there and then. Backward only scales what the forward accumulated.

What a loss writes itself is its kernel, `kernel(anchors, candidates, *parameters, gradients=...,
batch=..., **options)`: it returns the loss summed over its terms (accumulated in float64, returned in the
anchors' dtype) and, when `gradients` is not None, adds d(sum)/d(input) into it; `batch` holds the labels.
`blockwise_sum` runs the kernel under the rules every loss shares: similarities in float32 or wider even
under autocast, and no gradient work unless autograd will ask for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ssl_toolkit.losses.candidates import LabelBatch

BLOCK_ELEMENTS = 1 << 24  # (anchor, candidate) entries per block: 64 MB per float32 intermediate


def row_blocks(num_anchors: int, num_candidates: int) -> list[slice]:
    """Consecutive slices of anchor rows, each meeting the candidates in at most BLOCK_ELEMENTS entries."""
    block = max(1, BLOCK_ELEMENTS // max(1, num_candidates))
    return [slice(begin, min(begin + block, num_anchors)) for begin in range(0, num_anchors, block)]


class WorkBuffers:
    """(block, T) tensors reused by every block, on the device and by default in the dtype of `like`.

    A fresh 64 MB tensor per block costs as much in page faults as the block's arithmetic.
    """

    def __init__(self, num_anchors: int, num_candidates: int, like: torch.Tensor):
        blocks = row_blocks(num_anchors, num_candidates)
        self.shape = (max((block.stop - block.start for block in blocks), default=1), num_candidates)
        self.like = like
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, rows: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first `rows` rows of the buffer called `name` (made at its first use)."""
        if name not in self._buffers:
            self._buffers[name] = torch.empty(
                self.shape, dtype=dtype or self.like.dtype, device=self.like.device
            )
        return self._buffers[name][:rows]


@dataclass
class Gradients:
    """d(loss sum)/d(input) accumulated by a kernel: anchors (n, D), candidates (T, D), its parameters."""

    anchors: torch.Tensor
    candidates: torch.Tensor
    parameters: list[torch.Tensor]

    @classmethod
    def zeros(cls, anchors: torch.Tensor, candidates: torch.Tensor, parameters) -> Gradients:
        return cls(
            torch.zeros_like(anchors), torch.zeros_like(candidates), [torch.zeros_like(p) for p in parameters]
        )


Kernel = Callable[..., torch.Tensor]


class _BlockwiseSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel: Kernel, needs_grad: bool, anchors, candidates, *parameters):
        gradients = Gradients.zeros(anchors, candidates, parameters) if needs_grad else None
        total = kernel(anchors, candidates, *parameters, gradients=gradients)
        if gradients is not None:
            ctx.save_for_backward(gradients.anchors, gradients.candidates, *gradients.parameters)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        return (None, None, *(gradient * grad_total for gradient in ctx.saved_tensors))


def needs_gradient(*tensors: torch.Tensor) -> bool:
    """Whether autograd will ask for a gradient of these inputs.

    Decided before the autograd Function runs: inside its forward grad mode is always off, and under
    `torch.no_grad()` the inputs may still require grad; computing gradients nobody asked for would triple
    the cost of evaluation.
    """
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def blockwise_sum(kernel: Kernel, batch: LabelBatch, *parameters: torch.Tensor, **options) -> torch.Tensor:
    """`kernel`'s loss sum over `batch`, differentiable in its anchors and candidates and in the kernel's
    scalar `parameters`; `options` go to the kernel."""
    kernel = functools.partial(kernel, batch=batch, **options)
    needs_grad = needs_gradient(batch.anchors, batch.candidates, *parameters)
    # Autocast would run the block matmuls in bf16/fp16; these losses promise float32 similarities.
    with torch.autocast(batch.anchors.device.type, enabled=False):
        return _BlockwiseSum.apply(kernel, needs_grad, batch.anchors, batch.candidates, *parameters)
