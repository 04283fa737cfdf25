"""Label layouts and loss cases shared by the loss tests; every registered loss has a case."""

from __future__ import annotations

LABEL_LAYOUTS = {
    "pairs": [0, 1, 2, 3, 0, 1, 2, 3],
    "uneven_classes": [0, 0, 0, 0, 1, 1, 2, 2, 2, 5],  # with one singleton (5)
    "singletons_only": [0, 1, 2, 3, 4],
    "one_class": [7, 7, 7, 7, 7, 7],
    "large_ids": [1000, 3, 1000, 3, 42, 42, 99, -5, 1000],  # arbitrary ids, singletons among them
    "smaller_last_class": [4, 4, 4, 9, 9],  # anchors of 9 have fewer positives than the most any has
}
# Layouts that are class indices in [0, C), for the losses that take only those (ArcFace, cross-entropy).
CLASS_INDEX_LAYOUTS = {name: labels for name, labels in LABEL_LAYOUTS.items() if min(labels) >= 0}

# case -> (registered loss name, keyword arguments), for tests that run every loss. Embeddings are
# EMBEDDING_DIM wide and labels below NUM_CLASSES, which the class-weight losses' arguments are sized for.
EMBEDDING_DIM = 4
NUM_CLASSES = 8
LOSS_CASES = {
    "ntxent": ("ntxent", {"temperature": 0.3}),
    "supcon_out": ("supcon", {"temperature": 0.3, "variant": "out"}),
    "supcon_in": ("supcon", {"temperature": 0.3, "variant": "in"}),
    "coles": ("coles", {"temperature": 0.3}),
    "triplet_all": ("triplet", {"mining": "all", "margin": 0.5}),
    "triplet_hard": ("triplet", {"mining": "hard", "margin": 0.5}),
    "contrastive": ("contrastive", {"margin": 0.8}),
    "contrastive_hard_negatives": ("contrastive", {"margin": 1.2, "neg_count": 2}),
    "sigmoid": ("sigmoid", {}),
    "arcface": ("arcface", {"num_classes": NUM_CLASSES, "embedding_dim": EMBEDDING_DIM}),
    "cross_entropy": (
        "cross_entropy",
        {"num_classes": NUM_CLASSES, "embedding_dim": EMBEDDING_DIM, "label_smoothing": 0.1},
    ),
}


def assert_rejects_bad_class_labels(loss, embedding_dim: int) -> None:
    """A loss over 4 classes refuses labels out of range, float labels, a wrong count, and embeddings of
    the wrong width, each with a ValueError naming what is wrong."""
    import pytest
    import torch

    for bad in ([0, 1, 2, 4], [0, -1, 2, 3]):
        with pytest.raises(ValueError, match="labels"):
            loss(torch.randn(4, embedding_dim), torch.tensor(bad))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(4, embedding_dim), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(4, embedding_dim), torch.arange(3))
    with pytest.raises(ValueError, match="embeddings"):
        loss(torch.randn(4, embedding_dim - 1), torch.arange(4))
