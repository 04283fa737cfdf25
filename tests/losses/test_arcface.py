"""ArcFace against a loop-based float64 restatement of Deng et al. 2019, eq. 3, and known centres."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from cases import CLASS_INDEX_LAYOUTS as LABEL_LAYOUTS
from cases import assert_rejects_bad_class_labels
from torch.func import functional_call

from ssl_toolkit.losses.arcface import ArcFaceLoss


def arcface_reference(embeddings, labels, centres, margin, scale):
    """Angles by acos, cos(θ_y + m) on the true class (cos θ − m·sin m past θ + m = π), in float64."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    z = [unit(e) for e in embeddings.double().tolist()]
    w = [unit(c) for c in centres.double().tolist()]
    losses = []
    for i, y in enumerate(labels):
        logits = []
        for j in range(len(w)):
            cosine = sum(a * b for a, b in zip(z[i], w[j], strict=True))
            if j == y:
                theta = math.acos(max(-1.0, min(1.0, cosine)))
                if theta + margin <= math.pi:
                    cosine = math.cos(theta + margin)
                else:
                    cosine = cosine - margin * math.sin(margin)
            logits.append(scale * cosine)
        top = max(logits)
        log_partition = top + math.log(sum(math.exp(logit - top) for logit in logits))
        losses.append(log_partition - logits[y])
    return sum(losses) / len(losses)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _loss_with_centres(centres, **kwargs):
    loss = ArcFaceLoss(centres.shape[0], centres.shape[1], **kwargs)
    with torch.no_grad():
        loss.centres.copy_(centres)
    return loss


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
@pytest.mark.parametrize(("margin", "scale"), [(0.5, 64.0), (0.3, 8.0), (0.0, 16.0), (1.2, 4.0)])
def test_matches_the_papers_formula(layout, margin, scale):
    labels = torch.tensor(LABEL_LAYOUTS[layout])
    num_classes = max(LABEL_LAYOUTS[layout]) + 1
    embeddings = _randn(len(labels), 6, seed=len(labels))
    centres = _randn(num_classes, 6, seed=100 + num_classes)  # not the embeddings' seed: no θ = 0
    loss = _loss_with_centres(centres, margin=margin, scale=scale)(embeddings, labels)
    expected = arcface_reference(embeddings, labels.tolist(), centres, margin, scale)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _at_angle(theta):
    """A unit vector at angle θ from e0 in the (e0, e1) plane."""
    return torch.tensor([math.cos(theta), math.sin(theta), 0.0])


def test_margin_is_applied_to_the_true_class_only():
    centres = torch.eye(3) * torch.tensor([[2.0], [0.5], [3.0]])  # unnormalised on purpose
    loss = _loss_with_centres(centres, margin=0.5, scale=10.0)
    theta = 0.3
    logits = loss.logits(torch.stack([_at_angle(theta), _at_angle(theta)]), torch.tensor([0, 1]))
    expected = torch.tensor(
        [
            [10 * math.cos(theta + 0.5), 10 * math.sin(theta), 0.0],  # class 0 true, at θ from e0
            [10 * math.cos(theta), 10 * math.cos(math.pi / 2 - theta + 0.5), 0.0],  # class 1, at π/2 − θ
        ]
    )
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_past_pi_the_true_logit_falls_back_to_cos_minus_m_sin_m():
    loss = _loss_with_centres(torch.eye(3), margin=0.5, scale=10.0)
    theta = 3.0  # θ + m = 3.5 > π
    logits = loss.logits(_at_angle(theta)[None], torch.tensor([0]))
    fallback = math.cos(theta) - 0.5 * math.sin(0.5)
    torch.testing.assert_close(logits, torch.tensor([[10 * fallback, 10 * math.sin(theta), 0.0]]))
    expected = arcface_reference(_at_angle(theta)[None], [0], torch.eye(3), 0.5, 10.0)
    assert loss(_at_angle(theta)[None], torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_true_logit_never_rises_as_the_angle_grows():
    loss = _loss_with_centres(torch.eye(3), margin=0.5, scale=1.0)
    thetas = torch.linspace(0.0, math.pi, 200)
    embeddings = torch.stack([torch.cos(thetas), torch.sin(thetas), torch.zeros_like(thetas)], dim=1)
    true_logit = loss.logits(embeddings, torch.zeros(200, dtype=torch.long))[:, 0]
    assert torch.all(true_logit[1:] <= true_logit[:-1] + 1e-6)


def test_zero_margin_is_plain_softmax_over_scaled_cosines():
    embeddings, centres = _randn(12, 5, seed=1), _randn(4, 5, seed=2)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    loss = _loss_with_centres(centres, margin=0.0, scale=16.0)(embeddings, labels)
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=1).T
    assert loss.item() == pytest.approx(F.cross_entropy(16.0 * cosine, labels).item(), rel=1e-5)


def test_gradient_is_correct_in_float64():
    labels = torch.tensor(LABEL_LAYOUTS["uneven_classes"])
    embeddings = _randn(len(labels), 4, seed=3, dtype=torch.float64).requires_grad_()
    centres = _randn(6, 4, seed=4, dtype=torch.float64).requires_grad_()
    loss = ArcFaceLoss(6, 4, margin=0.5, scale=4.0)

    def f(e, w):
        return functional_call(loss, {"centres": w}, (e, labels))

    assert torch.autograd.gradcheck(f, (embeddings, centres), atol=1e-7, rtol=1e-5)


def test_centres_are_learned():
    loss = ArcFaceLoss(5, 8)
    assert loss.centres.shape == (5, 8) and loss.centres.requires_grad
    loss(_randn(10, 8), torch.arange(10) % 5).backward()
    assert loss.centres.grad is not None and loss.centres.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_finite(dtype):
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    embeddings = _randn(64, 32).to(dtype).requires_grad_()
    loss = ArcFaceLoss(10, 32)
    value = loss(embeddings, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert embeddings.grad.dtype == dtype and torch.isfinite(embeddings.grad.float()).all()
    assert torch.isfinite(loss.centres.grad).all()


def test_embeddings_on_a_centre_or_opposite_it_have_finite_gradients():
    # sin θ = 0 there, where sqrt(1 − cos²θ) has an infinite slope unless something clamps it.
    loss = ArcFaceLoss(3, 3)
    with torch.no_grad():
        loss.centres.copy_(torch.eye(3))
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], requires_grad=True)
    loss(embeddings, torch.tensor([0, 0])).backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(loss.centres.grad).all()


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_classes"):
        ArcFaceLoss(1, 8)
    with pytest.raises(ValueError, match="embedding_dim"):
        ArcFaceLoss(4, 0)
    for margin in (-0.1, math.pi / 2, 3.0):
        with pytest.raises(ValueError, match="margin"):
            ArcFaceLoss(4, 8, margin=margin)
    with pytest.raises(ValueError, match="scale"):
        ArcFaceLoss(4, 8, scale=0.0)
    loss = ArcFaceLoss(4, 8)
    assert_rejects_bad_class_labels(loss, embedding_dim=8)
