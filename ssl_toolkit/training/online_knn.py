"""Evaluation during pretraining: kNN top-1 of the current backbone on a held-out split, and the online
linear probe's top-1 on the same features."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset, Subset

from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.knn import knn_top1
from ssl_toolkit.eval.rankme import rankme, rankme_warning
from ssl_toolkit.training.online_probe import OnlineLinearProbe


def evenly_spaced_subset(dataset: Dataset, limit: int) -> Dataset:
    """At most `limit` items, spread over the whole dataset (datasets are often sorted by class)."""
    if len(dataset) <= limit:
        return dataset
    return Subset(dataset, torch.linspace(0, len(dataset) - 1, limit).long().tolist())


def embed_frozen(
    backbone: nn.Module,
    datasets: list[Dataset],
    accelerator: Accelerator,
    *,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Features (N, F) and targets (N,) of each dataset, embedded without augmentation by the backbone.

    The backbone is put in eval mode for the measurement and back in its previous mode afterwards.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        options = {"batch_size": batch_size, "collate_fn": collate_fn}
        return [extract_features(backbone, dataset, accelerator, **options) for dataset in datasets]
    finally:
        backbone.train(was_training)


class OnlineKNN:
    """`{"knn_top1": ..., "rankme": ...}` of `backbone` on evenly spaced items of two evaluation datasets,
    when called (RankMe of the bank's features), with `online_probe_top1` (the online linear probe on the
    same query features) when there is a probe.

    Args:
        backbone: the backbone being trained (not a copy: it is measured as it is at each call).
        bank: the labelled items whose features vote (at most `bank_size` of them).
        queries: the labelled items classified (at most `query_count` of them).
        accelerator: every process embeds its share.
        collate_fn: the data kind's batching of evaluation items.
        probe: the online linear probe trained alongside, or None.
    """

    def __init__(
        self,
        backbone: nn.Module,
        bank: Dataset,
        queries: Dataset,
        accelerator: Accelerator,
        *,
        bank_size: int,
        query_count: int,
        collate_fn: Callable | None = None,
        probe: OnlineLinearProbe | None = None,
    ):
        self.backbone, self.accelerator, self.collate_fn = backbone, accelerator, collate_fn
        self.num_classes = bank.num_classes
        self.bank = evenly_spaced_subset(bank, bank_size)
        self.queries = evenly_spaced_subset(queries, query_count)
        self.probe = probe

    def __call__(self) -> dict:
        (bank_x, bank_y), (query_x, query_y) = embed_frozen(
            self.backbone, [self.bank, self.queries], self.accelerator, collate_fn=self.collate_fn
        )
        result = {
            "knn_top1": knn_top1(bank_x, bank_y, query_x, query_y, self.num_classes),
            "rankme": rankme(bank_x),  # of the bank's h: collapse shows here before the loss says so
        }
        warning = rankme_warning(result["rankme"], bank_x.shape[1], len(bank_x))
        if warning is not None:
            self.accelerator.print(warning)
        if self.probe is not None:
            result["online_probe_top1"] = self.probe.top1(query_x, query_y)
        return result
