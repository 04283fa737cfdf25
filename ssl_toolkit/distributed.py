"""Everything that touches torch.distributed, with single-process fallbacks.

Without an initialised process group every function here acts as if there were one process,
so the library runs unchanged under plain `python`, `accelerate launch` or `torchrun`.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd

# torch 2.14 deprecates this gather in favour of private functional collectives whose names keep changing;
# the public one stays correct (gradients are summed back to each owner), so keep it and its warning quiet.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning
)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _row_counts(tensor: torch.Tensor) -> list[int]:
    count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def gather_rows(tensor: torch.Tensor, *, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate `tensor` (N, ...) from every process along dim 0.

    Processes may hold different N. With `with_grad`, the gather is differentiable: each process
    receives the gradient that every process's loss sends to its rows (summed), which is what makes
    a loss over gathered negatives equal to the single-process loss over the concatenated batch.

    Returns:
        The gathered tensor (sum of N over processes, ...) and the row where this process's rows start.
    """
    if not is_distributed():
        return tensor, 0
    counts = _row_counts(tensor)
    largest = max(counts)
    padded = tensor
    if tensor.shape[0] < largest:  # all_gather needs equal shapes
        padding = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    if with_grad:
        pieces = dist_autograd.all_gather(padded.contiguous())
    else:
        pieces = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(pieces, padded.contiguous())
    gathered = torch.cat([piece[:count] for piece, count in zip(pieces, counts, strict=True)])
    return gathered, sum(counts[: rank()])


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (non-differentiable) tensor over processes, e.g. a count of valid anchors."""
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def launched_on_cpu_processes() -> bool:
    """True when a launcher (accelerate launch, torchrun) started several processes and there is no CUDA.

    Accelerate then needs `cpu=True` to set up its gloo process group; without it, each process
    would believe it runs alone.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


# What gloo and NCCL say when a peer stopped answering (a stall past the timeout, or a dead process).
LOST_PEER_PHRASES = (
    "Timed out waiting",
    "Connection closed by peer",
    "Connection reset by peer",
    "timed out",
)


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process stalled or died."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(phrase in str(error) for phrase in LOST_PEER_PHRASES)
