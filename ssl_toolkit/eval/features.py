"""Features of a frozen model over a dataset, without augmentation, across processes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    accelerator: Accelerator,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`embed` applied to every item of `dataset`, in order; returns features (N, D) and targets (N,) on CPU.

    Each process embeds its share; `gather_for_metrics` reassembles them and drops the padding
    that evens out the last batch.
    """
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    )
    features, targets = [], []
    for images, labels in loader:
        with accelerator.autocast():
            output = embed(images)
        output, labels = accelerator.gather_for_metrics((output.float().contiguous(), labels))
        features.append(output.cpu())
        targets.append(labels.cpu())
    return torch.cat(features), torch.cat(targets)
