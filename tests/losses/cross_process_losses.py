"""Contrastive losses whose negatives come from every process, on a fixed global batch split over processes.

Run under a launcher (`accelerate launch THIS_FILE OUT_DIR`), each process writes its losses and the
gradients of its own view embeddings to OUT_DIR/rank<R>.pt. Imported without a process group,
`losses_and_view_grads(case)` gives the same quantities for one process holding the whole batch, which the
launched results are compared against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ssl_toolkit import distributed
from ssl_toolkit.losses import create_loss, loss_over_views

WORLD = 2
BATCH = 4  # samples per process
DIM = 6
CLASSES = [0, 1, 2, 0, 1, 1, 2, 0]  # of the WORLD·BATCH samples: each class has members on both processes

# case -> (registered loss name, its keyword arguments, number of views, whether CLASSES are the labels)
CASES = {
    "ntxent": ("ntxent", {"temperature": 0.3}, 2, False),
    "supcon_two_views": ("supcon", {"temperature": 0.3}, 2, False),
    "supcon_three_views": ("supcon", {"temperature": 0.3}, 3, False),
    "supcon_classes": ("supcon", {"temperature": 0.3, "variant": "in"}, 2, True),
}


def _share(rows: torch.Tensor, rank: int | None) -> torch.Tensor:
    """Process `rank`'s rows of the global batch, or all of them (rank None)."""
    return rows if rank is None else rows[rank * BATCH : (rank + 1) * BATCH]


def losses_and_view_grads(case: str, rank: int | None = None) -> tuple[float, list[torch.Tensor]]:
    """Loss of process `rank`'s share of the global batch (the whole batch for None), and its views' grads."""
    loss_name, kwargs, num_views, with_classes = CASES[case]
    # Seeded by the case alone, so every process and the single-process reference draw the same batch.
    generator = torch.Generator().manual_seed(list(CASES).index(case))
    views = [
        _share(
            torch.randn(WORLD * BATCH, DIM, generator=generator, dtype=torch.float64), rank
        ).requires_grad_()
        for _ in range(num_views)
    ]
    labels = _share(torch.tensor(CLASSES), rank) if with_classes else None
    loss = loss_over_views(create_loss(loss_name, **kwargs), views, labels)
    loss.backward()
    return loss.item(), [view.grad for view in views]


def main(out_dir: Path) -> None:
    from accelerate import Accelerator

    # What pretraining does: without CUDA, cpu=True is what makes Accelerate set up the gloo group.
    Accelerator(cpu=distributed.launched_on_cpu_processes())
    assert distributed.world_size() == WORLD, distributed.world_size()
    rank = distributed.rank()
    results = {case: losses_and_view_grads(case, rank) for case in CASES}
    placement = {"node_rank": int(os.environ["GROUP_RANK"]), "local_rank": int(os.environ["LOCAL_RANK"])}
    torch.save({"placement": placement, "results": results}, out_dir / f"rank{rank}.pt")
    # Leave together: a process exiting while gloo still talks to the other aborts ("terminate called").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
