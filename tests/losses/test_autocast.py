"""Under bf16 autocast (as pretraining runs with train.mixed_precision=bf16) every loss stays in float32."""

from __future__ import annotations

import pytest
import torch
from cases import EMBEDDING_DIM, LOSS_CASES

from ssl_toolkit.losses import create_loss


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_under_autocast_equals_the_float32_loss(case):
    name, kwargs = LOSS_CASES[case]
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(16, EMBEDDING_DIM, generator=generator, requires_grad=True)
    labels = torch.arange(8).repeat(2) % 4
    torch.manual_seed(0)
    loss_fn = create_loss(name, **kwargs)

    def run():
        if name == "ntxent":
            return loss_fn(embeddings[:8], embeddings[8:])
        return loss_fn(embeddings, labels)

    expected = run()
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run()
    (grad,) = torch.autograd.grad(loss, embeddings)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
