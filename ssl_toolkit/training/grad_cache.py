"""Gradient caching: the exact gradient of a contrastive batch larger than activation memory allows.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup". Gradient
accumulation adds no negatives (each micro-batch only sees its own), whereas a contrastive loss over B
samples only needs the B embeddings, which are small. So:

1. embed the batch chunk by chunk without a graph, recording the random state before each chunk;
2. compute the loss on all embeddings and its gradient with respect to them (and to the loss's own
   parameters), which also runs the losses' cross-process gather and its backward;
3. embed each chunk again, with a graph and the recorded random state (the same dropout masks), and
   backpropagate the cached gradient of its embeddings into the model.

Activation memory is that of one chunk (plus the batch's embeddings); the cost is a second forward. The
parameter gradients are those of the whole batch, with one exception: BatchNorm in training mode
normalises each chunk by that chunk's statistics (SyncBatchNorm: the chunk's across processes), as
gradient accumulation would, and its running statistics take one update per chunk (`num_batches_tracked`
counts chunks). Without BatchNorm, or with it in eval mode, the gradient is the large batch's to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch

RandomState = tuple[torch.Tensor, list[torch.Tensor]]


def _cuda_devices(inputs: Sequence[torch.Tensor]) -> list[int]:
    """CUDA devices whose generators a forward on `inputs` may draw from (e.g. for dropout).

    Only `.device` is asked of an input, so batches that are not tensors (padded sequences) chunk too."""
    indices = {x.device.index for x in inputs if x.device.type == "cuda"}
    return sorted(torch.cuda.current_device() if index is None else index for index in indices)


def _get_rng_state(devices: list[int]) -> RandomState:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(device) for device in devices]


def _set_rng_state(state: RandomState, devices: list[int]) -> None:
    cpu_state, cuda_states = state
    torch.set_rng_state(cpu_state)
    for device, cuda_state in zip(devices, cuda_states, strict=True):
        torch.cuda.set_rng_state(cuda_state, device)


def cached_backward(
    embed: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    loss_of: Callable[[list[torch.Tensor]], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    chunk_size: int,
    *,
    loss_parameters: Iterable[torch.Tensor] = (),
    buffers: Iterable[torch.Tensor] = (),
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Add to `.grad` the parameter gradients of `loss_of(embed(inputs))`, one chunk in memory at a time.

    Chunks are rows of the inputs: with inputs the views (B, C, H, W) of B images, every view of an
    image lands in the same chunk, so a chunk's views share a forward as they do without caching.

    Args:
        embed: inputs (rows of each input tensor) → embeddings, a sequence of tensors whose rows follow
            the rows of the inputs, e.g. one (b, D) tensor per view.
        loss_of: the embeddings of the whole batch (each embed output concatenated over chunks) → loss.
        inputs: tensors with the batch along dim 0, e.g. the views (B, C, H, W).
        chunk_size: rows per chunk; the last chunk may be smaller.
        loss_parameters: learnable parameters of `loss_of` itself (e.g. SigmoidLoss's t and b); their
            gradient is added in the last chunk's backward, so that DDP reduces it with the rest.
        buffers: state the forward updates (BatchNorm running statistics); restored after the first
            pass, so that it is updated once per chunk, by the second.
        backward: called with a scalar whose gradient is the cached one, e.g. `accelerator.backward`.
        no_sync: context without DDP's gradient all-reduce, e.g. `lambda: accelerator.no_sync(model)`;
            every backward but the last runs in it, so gradients are reduced once, when complete.

    Returns:
        The loss and the whole batch's embeddings (each embed output over all chunks), detached.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    batch = inputs[0].shape[0]
    if any(x.shape[0] != batch for x in inputs):
        raise ValueError(f"inputs must share dim 0; got {[tuple(x.shape) for x in inputs]}")
    starts = range(0, batch, chunk_size)
    devices = _cuda_devices(inputs)
    buffers = list(buffers)
    saved_buffers = [buffer.detach().clone() for buffer in buffers]

    # Pass 1: embeddings without a graph; the random state before each chunk is kept for pass 2.
    states: list[RandomState] = []
    pieces: list[Sequence[torch.Tensor]] = []
    with torch.no_grad():
        for start in starts:
            states.append(_get_rng_state(devices))
            pieces.append(embed([x[start : start + chunk_size] for x in inputs]))
        for buffer, saved in zip(buffers, saved_buffers, strict=True):
            buffer.copy_(saved)

    # The loss and its gradient w.r.t. every embedding (through the losses' differentiable gather).
    embeddings = [torch.cat(outputs).requires_grad_() for outputs in zip(*pieces, strict=True)]
    parameters = [p for p in loss_parameters if p.requires_grad]
    loss = loss_of(embeddings)
    grads = torch.autograd.grad(loss, [*embeddings, *parameters], allow_unused=True)
    embedding_grads, parameter_grads = grads[: len(embeddings)], grads[len(embeddings) :]

    # Pass 2: each chunk again, with its graph and its pass-1 random state; the caller's random state
    # is left where pass 1 left it.
    with torch.random.fork_rng(devices=devices):
        for index, (start, state) in enumerate(zip(starts, states, strict=True)):
            last = index == len(states) - 1
            _set_rng_state(state, devices)
            with contextlib.nullcontext() if last else no_sync():
                outputs = embed([x[start : start + chunk_size] for x in inputs])
                # A scalar whose gradient w.r.t. each output is the cached gradient of those rows.
                surrogate = sum(
                    (output * grad[start : start + chunk_size]).sum()
                    for output, grad in zip(outputs, embedding_grads, strict=True)
                    if grad is not None
                )
                if last:
                    pairs = zip(parameters, parameter_grads, strict=True)
                    surrogate = surrogate + sum((p * g).sum() for p, g in pairs if g is not None)
                backward(surrogate)
    return loss.detach(), [embedding.detach() for embedding in embeddings]
