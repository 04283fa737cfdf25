from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from ssl_toolkit.optim import create_optimizer, parameter_groups, scale_lr, warmup_cosine_lr


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def test_biases_and_norm_weights_get_no_weight_decay():
    model = _model()
    decay, no_decay = parameter_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)
    }  # fmt: skip


def test_lars_adapts_weights_but_not_biases_and_norm_weights():
    model = _model()
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr = 0.1
    create_optimizer(model, "lars", lr=lr, weight_decay=1e-6, momentum=0.9).step()
    for name, parameter in model.named_parameters():
        step = before[name] - parameter.detach()
        if parameter.ndim <= 1:  # plain SGD: lr·grad
            torch.testing.assert_close(step, torch.full_like(step, lr * 0.5))
        else:  # LARS: lr·trust·(grad + wd·w), trust = 0.001·‖w‖ / ‖grad + wd·w‖ (timm's default)
            update = torch.full_like(step, 0.5) + 1e-6 * before[name]
            trust = 0.001 * before[name].norm() / update.norm()
            torch.testing.assert_close(step, lr * trust * update)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_every_optimizer_decreases_a_simple_loss(name):
    model = _model()
    optimizer = create_optimizer(model, name, lr=0.05 if name != "lars" else 1.0, weight_decay=0.0)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 2, (16,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_lr_scaling_rules():
    assert scale_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scale_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scale_lr(0.3, 4096, "none") == 0.3
    with pytest.raises(ValueError, match="linear"):
        scale_lr(0.3, 256, "cubic")


def test_warmup_then_cosine_is_a_function_of_the_step():
    lrs = [warmup_cosine_lr(step, peak_lr=1.0, warmup_steps=10, total_steps=110) for step in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))  # rising during warmup
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then never rising
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
