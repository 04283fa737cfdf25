"""`data.fraction` for every kind: which items of the pretraining split a seeded, stratified share keeps."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Subset


def stratum_size(size: int, fraction: float) -> int:
    """How many of a stratum of `size` items a fraction keeps: `fraction × size` rounded to the nearest
    integer, halves up, and at least 1, so that no class present in the split disappears."""
    # Half up rather than Python's round (half to even), so that 0.5 of 3, 5, 7 items keeps 2, 3, 4.
    return max(1, math.floor(fraction * size + 0.5)) if size > 0 else 0


def stratified_indices(targets: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The sorted indices of `stratum_size(n_c, fraction)` items of each stratum c of `targets`, drawn
    without replacement by `seed`; unlabelled items (target -1) form one stratum.

    The draw uses its own CPU generator: the same on every process and every machine, and it leaves the
    global random state (which seeds the initial weights) untouched.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    targets = torch.as_tensor(targets, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    # Items grouped by target (a stable sort keeps each group in dataset order), groups in target order.
    by_target = torch.argsort(targets, stable=True)
    _, sizes = torch.unique(targets, sorted=True, return_counts=True)
    kept = []
    for members in torch.split(by_target, sizes.tolist()):
        count = stratum_size(len(members), fraction)
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    if not kept:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(kept).sort().values


class TargetedSubset(Subset):
    """A `Subset` that keeps what the training loop reads of its dataset: `targets` (of its items) and
    `num_classes` (the dataset's, so class indices keep their meaning)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor):
        super().__init__(dataset, torch.as_tensor(indices, dtype=torch.long).tolist())
        self.targets = torch.as_tensor(dataset.targets)[self.indices]
        self.num_classes = dataset.num_classes

    def with_transform(self, transform) -> TargetedSubset:
        """The same items of `dataset.with_transform(transform)`, for kinds whose datasets have one."""
        return TargetedSubset(self.dataset.with_transform(transform), torch.as_tensor(self.indices))
