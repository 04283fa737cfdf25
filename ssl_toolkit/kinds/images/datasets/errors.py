"""The errors a dataset raises when its files are missing or none of them can be read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where we looked; the message (one line) names every path and how to get
    the data.

    Args:
        dataset: The registered dataset name, e.g. "fashion_mnist".
        searched: Every file or folder that was looked at, in the order they were tried.
        how_to_get: One or more sentences telling the user how to make the data available.
        reason: Optional detail on what was wrong (e.g. "no class folders"), shown after the paths.
    """

    def __init__(
        self, dataset: str, searched: Sequence[str | Path], how_to_get: str, reason: str | None = None
    ):
        self.dataset = dataset
        self.searched = [str(path) for path in searched]
        self.how_to_get = how_to_get
        self.reason = reason
        # One line, as every error a command prints: the paths separated by commas.
        looked_at = ", ".join(self.searched) or "no path (data.root is not set)"
        detail = f"; {reason}" if reason else ""
        super().__init__(
            f"dataset {dataset!r} not found; looked at: {looked_at}{detail}; to get it: {how_to_get}"
        )

    def __reduce__(self):
        # DataLoader workers pickle exceptions; rebuild from the constructor arguments, not the message.
        return type(self), (self.dataset, self.searched, self.how_to_get, self.reason)


class UndecodableImageError(ValueError):
    """Neither torchvision nor PIL can decode an image file."""


class NoReadableImagesError(RuntimeError):
    """Every image file of a lazily decoded dataset failed to decode."""


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped; filter this category to silence it."""


class SkippedFolderLinkWarning(UserWarning):
    """A folder link inside an image folder was not followed: it loops, leads back into the dataset, or
    its target is listed already."""
