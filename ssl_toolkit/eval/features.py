"""Features of a frozen model over a dataset, without augmentation, across processes; and their cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    accelerator: Accelerator | None = None,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`embed` applied to every item `(input, target)` of `dataset`, in order; returns features (N, D) and
    targets (N,) on the CPU.

    With an `accelerator`, each process embeds its share under its autocast, and `gather_for_metrics`
    reassembles them and drops the padding that evens out the last batch. Without one, this process embeds
    everything on `device` (default: the CPU).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    features, targets = [], []
    for inputs, labels in loader:
        if accelerator is None:
            output = embed(inputs.to(device) if device is not None else inputs)
        else:
            with accelerator.autocast():
                output = embed(inputs)
            output, labels = accelerator.gather_for_metrics((output.float().contiguous(), labels))
        features.append(output.float().cpu())
        targets.append(labels.cpu())
    return torch.cat(features), torch.cat(targets)


class FeatureCache:
    """Features (N, D) and targets (N,) saved under a folder, each file with the key that produced it.

    An entry is used only when its stored key equals the one asked for, so features of an older
    encoder, another data root or image size are recomputed instead of reused. Files are written to a
    temporary name and renamed, so an interrupted write never leaves a truncated entry behind.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def load(self, name: str, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored features and targets of `name` if they were made under `key`, else None."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored_key = json.loads((handle.metadata() or {}).get("key", "null"))
            if stored_key != _canonical(key):
                return None
            tensors = load_file(str(path))
            return tensors["features"], tensors["targets"]
        except (OSError, ValueError, KeyError, SafetensorError):  # unreadable entry: recompute it
            return None

    def save(self, name: str, key: dict, features: torch.Tensor, targets: torch.Tensor) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        tensors = {"features": features.contiguous(), "targets": targets.contiguous()}
        save_file(tensors, str(partial), metadata={"key": json.dumps(_canonical(key))})
        partial.replace(path)
        return path


def _canonical(key: dict) -> dict:
    """`key` as it reads back from JSON (tuples become lists), so stored and fresh keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))
