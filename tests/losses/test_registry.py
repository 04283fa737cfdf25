"""The registry's contract: every loss has a test case, names and aliases resolve, bad arguments fail."""

from __future__ import annotations

import math

import pytest
from cases import LOSS_CASES

from ssl_toolkit.losses import LOSSES, ColesLoss, create_loss, loss_class, registered_name


def test_every_registered_loss_has_a_case_in_the_shared_table():
    assert {name for name, _ in LOSS_CASES.values()} == set(LOSSES)


def test_coles_is_registered_under_its_own_name_and_softmax_as_an_alias():
    assert loss_class("coles") is ColesLoss and loss_class("softmax") is ColesLoss
    assert registered_name("softmax") == "coles" and registered_name("supcon") == "supcon"
    with pytest.raises(ValueError, match=r"coles.*softmax"):
        loss_class("coles_loss")


ARGUMENTS = [
    ("ntxent", "temperature"),
    ("supcon", "temperature"),
    ("coles", "temperature"),
    ("triplet", "margin"),
    ("contrastive", "margin"),
    ("sigmoid", "init_scale"),
]


@pytest.mark.parametrize(("name", "argument"), ARGUMENTS)
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_non_positive_nan_and_infinite_arguments_are_rejected(name, argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be a positive finite number"):
        create_loss(name, **{argument: value})


@pytest.mark.parametrize("value", [0.0, math.nan])
def test_arcface_scale_is_checked_the_same_way(value):
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        create_loss("arcface", num_classes=3, embedding_dim=4, scale=value)
