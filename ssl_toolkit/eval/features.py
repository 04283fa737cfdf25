"""Features of a frozen model over a dataset, without augmentation, across processes; and their cache."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from ssl_toolkit.files import write_safetensors

print_to_stderr = functools.partial(print, file=sys.stderr)


@torch.no_grad()
def extract_features_and_readable(
    embed: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    accelerator: Accelerator | None = None,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    collate_fn: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, D), targets (N,) and whether each item was readable (N,) (bool), on the CPU, in order.

    Items are `(input, target)`, or `(input, target, readable)` where an item's input may be a stand-in
    (as the image kind's evaluation items are for an unreadable file). With an `accelerator`, each
    process embeds its share under its autocast, and `gather_for_metrics` reassembles features, targets and
    readability together and drops the padding that evens out the last batch. Without one, this process embeds
    everything on `device` (default: the CPU). `collate_fn` batches items that torch's default collation
    cannot (the data kind's, e.g. padded event sequences).
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn
    )
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    features, targets, readable = [], [], []
    for inputs, labels, *marks in loader:
        # As integers: some collective backends cannot gather bool tensors.
        ok = marks[0].long() if marks else torch.ones(len(labels), dtype=torch.long, device=labels.device)
        if accelerator is None:
            output = embed(inputs.to(device) if device is not None else inputs)
        else:
            with accelerator.autocast():
                output = embed(inputs)
            output, labels, ok = accelerator.gather_for_metrics((output.float().contiguous(), labels, ok))
        features.append(output.float().cpu())
        targets.append(labels.cpu())
        readable.append(ok.cpu().bool())
    return torch.cat(features), torch.cat(targets), torch.cat(readable)


def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    accelerator: Accelerator | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`embed` applied to every readable item `(input, target[, readable])` of `dataset`, in order; returns
    features (N, D) and targets (N,) on the CPU, without the unreadable items.

    `options` (`batch_size`, `num_workers`, `device`, `collate_fn`) and the processes are those of
    `extract_features_and_readable`.
    """
    features, targets, readable = extract_features_and_readable(embed, dataset, accelerator, **options)
    return features[readable], targets[readable]


class FeatureCache:
    """Features (N, D) and targets (N,) saved under a folder, each file with the key that produced it.

    An entry is used only when its stored key equals the one asked for, so features of an older
    encoder, another data root or image size are recomputed instead of reused. Files are written to a
    temporary name and renamed, so an interrupted write never leaves a truncated entry behind; an entry
    that cannot be read all the same (a damaged disk, an edit) is reported through `report`, one line
    naming it, and recomputed. Each entry also keeps how many unreadable items its features leave out.
    """

    def __init__(self, directory: str | Path, report: Callable[[str], object] = print_to_stderr):
        self.directory = Path(directory)
        self.report = report

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def load(self, name: str, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored features and targets of `name` if they were made under `key`, else None."""
        entry = self.load_entry(name, key)
        return None if entry is None else entry[:2]

    def load_entry(self, name: str, key: dict) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The stored features, targets and unreadable-item count of `name` if made under `key`, else None."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if json.loads(metadata.get("key", "null")) != _canonical(key):
                return None  # stale, not damaged: recomputed without a word
            tensors = load_file(str(path))
            features, targets = tensors["features"], tensors["targets"]
            unreadable = int(metadata.get("unreadable", "0"))
            if features.ndim != 2 or targets.shape != (len(features),):
                raise ValueError(f"features {tuple(features.shape)} and targets {tuple(targets.shape)}")
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            self.report(f"cached features {path} cannot be read ({type(error).__name__}); recomputing them")
            return None
        return features, targets, unreadable

    def save(
        self, name: str, key: dict, features: torch.Tensor, targets: torch.Tensor, *, unreadable: int = 0
    ) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.contiguous(), "targets": targets.contiguous()}
        metadata = {"key": json.dumps(_canonical(key)), "unreadable": str(unreadable)}
        return write_safetensors(tensors, path, metadata)


def _canonical(key: dict) -> dict:
    """`key` as it reads back from JSON (tuples become lists), so stored and fresh keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))
