"""Augmentation presets do what they say, on both implementations (CPU and kornia "GPU" path, run on CPU)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms.v2 import functional as F

from ssl_toolkit.kinds.images.views import (
    PRESETS,
    BatchViews,
    PerImageViews,
    ViewParams,
    color_jitter,
    color_jitter_batch,
    eval_transform,
    gaussian_blur,
    preset_views,
    resolve_device,
    sampling,
    view_grid,
)

MEAN = (0.4, 0.5, 0.6)  # distinct per channel, so a mix-up of channels shows
STD = (0.2, 0.25, 0.3)
# A statistic this many standard errors off its expectation fails a test: with the few dozen such checks
# here, a correct implementation fails one by chance with probability below 1e-4.
Z_LIMIT = 4.5
TORCHVISION_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def make_views(images: torch.Tensor, views: list[ViewParams], path: str) -> list[torch.Tensor]:
    """Views (B, C, s, s) of uint8 images (B, C, H, W) by the CPU path (image by image) or the GPU path."""
    if path == "gpu":
        return BatchViews(views)(images)
    per_image = [PerImageViews(views)(image) for image in images]
    return [torch.stack(view) for view in zip(*per_image, strict=True)]


def denormalise(views: torch.Tensor, view: ViewParams) -> torch.Tensor:
    """Pixels in [0, 1] of normalised views (B, C, s, s)."""
    return views * torch.tensor(view.std).view(1, -1, 1, 1) + torch.tensor(view.mean).view(1, -1, 1, 1)


def colourful_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, side, side): smooth saturated colour fields, no gray image among them."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (fine * 255).round().to(torch.uint8)


def coordinate_images(count: int, side: int) -> torch.Tensor:
    """uint8 (count, 3, side, side): channel 0 is 2·x, channel 1 is 2·y; a view's range reveals its crop."""
    ramp = torch.arange(side, dtype=torch.uint8) * 2
    image = torch.stack(
        [ramp.expand(side, side), ramp.view(-1, 1).expand(side, side), torch.zeros(side, side)]
    )
    return image.to(torch.uint8).expand(count, -1, -1, -1).contiguous()


def plain_view(size: int, channels: int = 3, **changes) -> ViewParams:
    """A view with nothing random unless `changes` says so: whole-image crop, no flip, colour or blur."""
    fields = dict(
        size=size,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_strength=1.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
        solarize_p=0.0,
        mean=MEAN[:channels] if channels == 3 else (0.5,),
        std=STD[:channels] if channels == 3 else (0.25,),
    )
    return ViewParams(**{**fields, **changes})


def simclr(image_size: int, channels: int = 3, **kwargs) -> list[ViewParams]:
    mean, std = (MEAN, STD) if channels == 3 else ((0.5,), (0.25,))
    return preset_views("simclr", image_size=image_size, channels=channels, mean=mean, std=std, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Presets


@pytest.mark.parametrize(
    ("image_size", "channels", "blur_p", "kernel", "grayscale_p"),
    [(28, 1, 0.0, 3, 0.0), (32, 3, 0.0, 3, 0.2), (96, 3, 0.5, 9, 0.2), (224, 3, 0.5, 23, 0.2)],
)
def test_simclr_preset_is_sized_by_image_size(image_size, channels, blur_p, kernel, grayscale_p):
    views = simclr(image_size, channels)
    assert len(views) == 2 and views[0] == views[1]
    view = views[0]
    assert view.size == image_size
    assert view.scale == (0.08, 1.0) and view.ratio == (3 / 4, 4 / 3)
    assert view.flip_p == 0.5 and view.jitter_p == 0.8 and view.jitter_strength == 1.0
    assert view.grayscale_p == grayscale_p
    assert view.blur_p == blur_p and view.blur_sigma == (0.1, 2.0)
    assert view.blur_kernel_size == kernel
    assert view.solarize_p == 0.0


def test_jitter_ranges_follow_strength():
    view = simclr(32, strength=0.5)[0]
    brightness, contrast, saturation, hue = view.jitter_ranges
    assert brightness == contrast == saturation == pytest.approx((0.6, 1.4))
    assert hue == pytest.approx((-0.1, 0.1))
    assert simclr(32, strength=1.5)[0].jitter_ranges[0] == pytest.approx((0.0, 2.2))  # factors stay ≥ 0


def test_preset_overrides_replace_preset_values():
    view = simclr(32, min_scale=0.3, flip_p=0.0, blur_p=0.25, solarize_p=0.1)[0]
    assert (view.scale, view.flip_p, view.blur_p, view.solarize_p) == ((0.3, 1.0), 0.0, 0.25, 0.1)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: " + ", ".join(PRESETS)):
        preset_views("simclr2", image_size=32, channels=3, mean=MEAN, std=STD)


@pytest.mark.parametrize(
    "changes",
    [
        {"scale": (0.0, 1.0)},
        {"scale": (0.5, 0.4)},
        {"flip_p": 1.5},
        {"std": (0.2, 0.0, 0.3)},
        {"mean": (0.5,)},
    ],
)
def test_view_params_reject_invalid_values(changes):
    with pytest.raises(ValueError):
        plain_view(32, **changes)


def test_multicrop_gives_large_then_small_views():
    views = simclr(224, n_views=2, small_crops=4)
    assert [view.size for view in views] == [224] * 2 + [96] * 4
    assert views[0].scale == (0.14, 1.0) and views[-1].scale == (0.05, 0.14)
    assert views[-1].blur_p == 0.5  # 96 px views are blurred too, as in SwAV
    small = simclr(32, small_crops=2, small_size=16, min_scale=0.2)
    assert [(view.size, view.scale) for view in small] == [(32, (0.2, 1.0))] * 2 + [(16, (0.05, 0.2))] * 2


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_multicrop_and_n_views_shapes(path):
    images = colourful_images(3, 40)
    out = make_views(images, simclr(32, n_views=3, small_crops=2, small_size=12), path)
    assert [tuple(view.shape) for view in out] == [(3, 3, 32, 32)] * 3 + [(3, 3, 12, 12)] * 2
    assert all(view.dtype == torch.float32 and view.is_contiguous() for view in out)


# ---------------------------------------------------------------------------------------------------------
# Statistics: the random operations happen with the stated distributions, on both paths


def accepted_area_cdf(scale: tuple[float, float], ratio: tuple[float, float]):
    """CDF of the crop area fraction of torchvision's RandomResizedCrop on a square image.

    A proposal of area a ~ U(scale) and ratio r (log-uniform) fits iff a·r ≤ 1 and a/r ≤ 1; the first
    fitting one of 10 is kept (the fallback after 10 misfits is negligible here). The kept area's density is
    proportional to q(a) = P(a ≤ r ≤ 1/a), integrated numerically.
    """
    grid = np.linspace(scale[0], scale[1], 20001)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    low = np.clip(np.log(grid), log_low, log_high)  # log r ≥ log a
    high = np.clip(-np.log(grid), log_low, log_high)  # log r ≤ −log a
    fits = np.clip(high - low, 0, None) / (log_high - log_low)
    cumulative = np.concatenate([[0.0], np.cumsum((fits[1:] + fits[:-1]) / 2 * np.diff(grid))])
    cumulative /= cumulative[-1]
    return lambda x: np.interp(x, grid, cumulative)


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_crop_area_follows_random_resized_crop(path):
    side, count = 96, 1500
    view = plain_view(side, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)
    torch.manual_seed(1)
    pixels = denormalise(make_views(coordinate_images(count, side), [view], path)[0], view) * 255
    # The view's corner pixels are the crop's corner pixels (both paths), so each range is 2·(side − 1).
    widths = ((pixels[:, 0].amax(dim=(1, 2)) - pixels[:, 0].amin(dim=(1, 2))) / 2).round() + 1
    heights = ((pixels[:, 1].amax(dim=(1, 2)) - pixels[:, 1].amin(dim=(1, 2))) / 2).round() + 1
    areas = (widths * heights / side**2).numpy()
    result = stats.kstest(areas, accepted_area_cdf(view.scale, view.ratio))
    assert result.pvalue > 1e-4, f"crop areas do not follow RandomResizedCrop's: {result}"
    ratios = widths / heights
    assert ratios.min() >= 3 / 4 * 0.9 and ratios.max() <= 4 / 3 / 0.9  # up to pixel rounding
    # The same statistic rejects crops from another scale range: the test can fail.
    assert stats.kstest(areas, accepted_area_cdf((0.2, 1.0), view.ratio)).pvalue < 1e-6


def is_gray(views: torch.Tensor, view: ViewParams) -> torch.Tensor:
    pixels = denormalise(views, view)
    return (pixels - pixels[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-4


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_grayscale_fraction_is_one_fifth(path):
    views = simclr(32)
    torch.manual_seed(2)
    out = make_views(colourful_images(1000, 32), views, path)
    gray = torch.cat([is_gray(batch, views[0]) for batch in out]).double()
    n = len(gray)
    z = (gray.mean().item() - 0.2) / math.sqrt(0.2 * 0.8 / n)
    assert abs(z) < Z_LIMIT, f"grayscale fraction {gray.mean():.3f} of {n} views, expected 0.2"


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_flip_fraction_is_one_half(path):
    view = plain_view(32, flip_p=0.5)
    torch.manual_seed(3)
    pixels = denormalise(make_views(coordinate_images(1000, 32), [view], path)[0], view)
    flipped = (pixels[:, 0, :, 0].mean(dim=1) > pixels[:, 0, :, -1].mean(dim=1)).double()
    z = (flipped.mean().item() - 0.5) / math.sqrt(0.25 / len(flipped))
    assert abs(z) < Z_LIMIT, f"flip fraction {flipped.mean():.3f}, expected 0.5"


def view_statistics(views: torch.Tensor) -> torch.Tensor:
    """Per view (rows): each channel's mean, std and squared mean (columns), of views (B, C, s, s).

    Averaged over views, the first two are the channels' mean and std; the third adds the spread of the
    views' means, which the colour jitter's strength sets.
    """
    means = views.mean(dim=(2, 3))
    return torch.cat([means, views.std(dim=(2, 3)), means**2], dim=1).double()


def largest_z(first: torch.Tensor, second: torch.Tensor) -> float:
    """Largest |difference of column means| over its standard error, between two samples of rows."""
    error = (first.var(dim=0) / len(first) + second.var(dim=0) / len(second)).sqrt()
    return ((first.mean(dim=0) - second.mean(dim=0)).abs() / error).max().item()


def test_cpu_and_gpu_paths_give_matching_channel_statistics():
    """Same config, same images: per-channel mean and std of the views agree within sampling error.

    Each path makes 1,200 views; every view contributes its per-channel statistics (`view_statistics`),
    and each of their nine averages is compared by its standard error (views are independent draws).
    The paths differ systematically only in how a crop is resampled (kornia maps corner pixels, torchvision
    pixel areas): measured on these images, that moves the average std by 0.0005 of the [0, 1] range,
    about 0.4 standard errors here, and the means by under 0.05; the rest of the budget is chance.
    """
    views = simclr(32, n_views=2, blur_p=0.5, solarize_p=0.2)  # every operation on
    images = colourful_images(600, 40)
    torch.manual_seed(4)
    cpu = view_statistics(torch.cat(make_views(images, views, "cpu")))
    gpu = view_statistics(torch.cat(make_views(images, views, "gpu")))
    assert largest_z(cpu, gpu) < Z_LIMIT
    # The comparison has power: half the colour-jitter strength on one side is caught.
    weaker = [dataclasses.replace(view, jitter_strength=0.5) for view in views]
    assert largest_z(cpu, view_statistics(torch.cat(make_views(images, weaker, "gpu")))) > Z_LIMIT


def test_cpu_and_gpu_paths_agree_on_deterministic_views():
    """With every random choice fixed (whole-image crop, p = 1 or 0), both paths compute the same pixels."""
    view = plain_view(48, flip_p=1.0, jitter_strength=0.0, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0)
    view = dataclasses.replace(view, blur_sigma=(1.0, 1.0), solarize_p=1.0)
    images = colourful_images(4, 48)
    cpu = make_views(images, [view], "cpu")[0]
    gpu = make_views(images, [view], "gpu")[0]
    assert torch.allclose(cpu, gpu, atol=1e-4)
    reference = F.gaussian_blur(F.rgb_to_grayscale(images.flip(-1).float() / 255, 3), [5, 5], [1.0, 1.0])
    reference = torch.where(reference >= 0.5, 1 - reference, reference)
    assert torch.allclose(cpu, F.normalize(reference, MEAN, STD), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Colour jitter and blur equal torchvision's on fixed parameters


def torchvision_jitter(image: torch.Tensor, factors, order) -> torch.Tensor:
    for op in order:
        image = TORCHVISION_JITTER[op](image, factors[op])
    return image


@pytest.mark.parametrize("factors", [(1.3, 0.6, 1.7, 0.15), (0.2, 1.8, 0.2, -0.2), (1.0, 1.0, 0.0, 0.5)])
def test_color_jitter_matches_torchvision(factors):
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(3, 24, 30, generator=generator)
    image[:, :4] = image[:1, :4]  # gray pixels
    image[0, 4:8] = image[1, 4:8]  # ties between the maximum channels
    image[:, 8:10] = 0.0  # black
    before = image.clone()
    for order in itertools.permutations(range(4)):
        expected = torchvision_jitter(image, factors, order)
        assert torch.allclose(color_jitter(image, factors, order), expected, atol=1e-5), order
    assert torch.equal(image, before)


def test_color_jitter_on_one_channel_uses_brightness_and_contrast_only():
    image = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(6))
    factors, order = (1.4, 0.5, 0.0, 0.4), (3, 2, 1, 0)
    expected = F.adjust_brightness(F.adjust_contrast(image, 0.5), 1.4)
    assert torch.allclose(color_jitter(image, factors, order), expected, atol=1e-6)
    batch = color_jitter_batch(image.unsqueeze(0), torch.tensor([factors]), torch.tensor([order]))
    assert torch.allclose(batch[0], expected, atol=1e-5)


def test_color_jitter_batch_applies_each_images_own_factors_and_order():
    images = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(7))
    factors = torch.tensor([[1.3, 0.6, 1.7, 0.15], [0.5, 1.5, 0.3, -0.2], [1.0, 1.0, 1.0, 0.0]] * 2)
    orders = torch.tensor(
        [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [3, 0, 1, 2], [0, 2, 3, 1]]
    )
    out = color_jitter_batch(images, factors, orders)
    for image, result, image_factors, order in zip(
        images, out, factors.tolist(), orders.tolist(), strict=True
    ):
        # kornia's luma weights differ from torchvision's in the 4th decimal.
        assert torch.allclose(result, torchvision_jitter(image, image_factors, order), atol=5e-4)


@pytest.mark.parametrize(("kernel_size", "sigma"), [(23, 0.1), (23, 0.7), (23, 2.0), (9, 2.0), (3, 1.0)])
def test_gaussian_blur_matches_torchvision(kernel_size, sigma):
    image = torch.rand(3, 40, 36, generator=torch.Generator().manual_seed(8))
    expected = F.gaussian_blur(image, [kernel_size, kernel_size], [sigma, sigma])
    assert torch.allclose(gaussian_blur(image, kernel_size, sigma), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Contract: dtypes, shapes, normalisation, inputs left alone, one channel, pickling


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_views_without_augmentation_are_the_normalised_image(path):
    images = colourful_images(3, 20)
    out = make_views(images, [plain_view(20)], path)[0]
    expected = F.normalize(images.float() / 255, MEAN, STD)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_uint8_input_is_left_unchanged(path):
    images = colourful_images(4, 32)
    before = images.clone()
    make_views(images, simclr(32, blur_p=1.0, solarize_p=0.5), path)
    assert torch.equal(images, before)


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_one_channel_images_like_the_quickstart(path):
    """8×8 digits upsampled to 16 px with min_scale 0.3 and no flip, as recipes/quickstart.yaml does."""
    views = simclr(16, channels=1, min_scale=0.3, flip_p=0.0)
    images = (torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(9)) * 255).to(torch.uint8)
    out = make_views(images, views, path)
    assert [tuple(view.shape) for view in out] == [(64, 1, 16, 16)] * 2
    pixels = denormalise(out[0], views[0])
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert not torch.allclose(out[0], out[1])  # two different views


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_wrong_inputs_are_rejected_with_the_expected_format(path):
    transform = PerImageViews(simclr(32)) if path == "cpu" else BatchViews(simclr(32))
    shape = (3, 32, 32) if path == "cpu" else (2, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        transform(torch.rand(shape))
    with pytest.raises(ValueError, match="C=3"):
        transform(torch.zeros((*shape[:-3], 1, 32, 32), dtype=torch.uint8))


def test_cpu_views_pickle_for_dataloader_workers():
    transform = pickle.loads(pickle.dumps(PerImageViews(simclr(32, small_crops=1))))
    out = transform(colourful_images(1, 32)[0])
    assert [tuple(view.shape) for view in out] == [(3, 32, 32), (3, 32, 32), (3, 14, 14)]


def test_parameter_draws_agree_between_implementations():
    """The CPU path's per-view draws and the GPU path's vectorised ones give the same parameters."""
    view = simclr(32)[0]
    uniforms = sampling.draw_uniforms(2000)
    batch = sampling.draw_batch(view, uniforms, 37, 50)
    for index, row in enumerate(uniforms.tolist()):
        draw = sampling.draw_view(view, row, 37, 50)
        assert draw == (
            batch.top[index].item(),
            batch.left[index].item(),
            batch.height[index].item(),
            batch.width[index].item(),
            batch.flip[index].item(),
            batch.jitter[index].item(),
            batch.factors[index].tolist(),
            batch.order[index].tolist(),
            batch.gray[index].item(),
            batch.blur[index].item(),
            batch.sigma[index].item(),
            batch.solarize[index].item(),
        )


def test_eval_transform_resizes_crops_and_normalises():
    image = colourful_images(1, 24)[0][:, :, :20]  # 24 × 20
    out = eval_transform(16, MEAN, STD)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, eval_transform(16, MEAN, STD)(image))


# ---------------------------------------------------------------------------------------------------------
# Display and device choice


def test_view_grid_lays_out_samples_by_views():
    large = torch.zeros(5, 3, 16, 16)  # normalised 0 is the mean colour
    small = torch.zeros(5, 3, 8, 8)
    grid = view_grid([large, large, small], MEAN, STD, max_images=4)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 4 * 18 + 2, 3 * 18 + 2)
    expected = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8)
    assert torch.equal(grid[:, 2, 2], expected)  # first sample, first view
    assert torch.equal(grid[:, 2 + 4, 2 * 18 + 2 + 4], expected)  # the small view, centred in its cell
    assert torch.equal(grid[:, 2, 2 * 18 + 2], torch.full((3,), 255, dtype=torch.uint8))  # padding around it
    gray = view_grid([torch.zeros(2, 1, 8, 8)], (0.5,), (0.25,))
    assert gray.shape == (3, 2 * 10 + 2, 12) and gray[0, 2, 2] == gray[2, 2, 2] == 128


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("gpu") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="cpu, gpu, auto"):
        resolve_device("cuda")
