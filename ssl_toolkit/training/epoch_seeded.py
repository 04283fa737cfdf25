"""Per-item random state that depends only on (seed, epoch, index), for reproducible augmentation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class EpochSeededDataset(Dataset):
    """Loads each item of `dataset`, transform included, under a generator seeded by (seed, epoch, index).

    Augmentations then no longer depend on how many items were drawn before, in which worker, or how far
    the loader read ahead, so a run resumed mid-epoch sees exactly the views the uninterrupted run saw.
    The epoch lives in shared memory, so DataLoader workers (persistent ones included) see `set_epoch`.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = hash((self.seed, int(self._epoch[0]), index)) & 0x7FFF_FFFF_FFFF_FFFF
        # The caller's generator is restored afterwards: in the main process (num_workers=0) the model's own
        # randomness must not depend on how many items were loaded. Only the CPU generator is touched
        # (torch.manual_seed / fork_rng also visit every accelerator and cost as much as the item itself).
        generator = torch.default_generator
        caller_state = generator.get_state()
        generator.manual_seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(caller_state)
