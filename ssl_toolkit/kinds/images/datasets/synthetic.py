"""Generated images of simple shapes: a deterministic dataset for benchmarks and tests, no files needed.

Each class is one shape; every image draws its own position, size, shape colour and background colour
(always apart, so the shape stays visible) and a little pixel noise from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset

SPLITS = ("train", "test")
DEFAULT_NUM_IMAGES = {"train": 5_000, "test": 1_000}
RADIUS_RANGE = (0.2, 0.4)  # shape half-extent, as a fraction of the image size
COLOUR_SHIFT_RANGE = (0.35, 0.65)  # per-channel shape/background distance on the colour circle [0, 1)
NOISE_STD = 0.03
PIXELS_PER_CHUNK = 1 << 22  # images are rendered in chunks of about this many pixels, to bound memory

ShapeMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _box(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs())


def _stripes(coordinate: torch.Tensor) -> torch.Tensor:
    return torch.floor((coordinate + 1) * 2.5).remainder(2) == 0


# Each mask takes coordinates u (n, 1, S) and v (n, S, 1), centred on the shape and in units of its
# radius, and returns the shape's pixels (n, S, S). Ordered so that any prefix is a varied set.
SHAPES: dict[str, ShapeMask] = {
    "circle": lambda u, v: u**2 + v**2 <= 1,
    "square": lambda u, v: _box(u, v) <= 0.8,
    "triangle": lambda u, v: (v <= 0.8) & (u.abs() <= (v + 1) * 0.5),
    "plus": lambda u, v: (torch.minimum(u.abs(), v.abs()) <= 0.28) & (_box(u, v) <= 1),
    "ring": lambda u, v: ((u**2 + v**2) <= 1) & ((u**2 + v**2) >= 0.55**2),
    "diamond": lambda u, v: u.abs() + v.abs() <= 1,
    "x_cross": lambda u, v: (torch.minimum((u - v).abs(), (u + v).abs()) <= 0.4) & (_box(u, v) <= 0.9),
    "frame": lambda u, v: (_box(u, v) <= 0.9) & (_box(u, v) >= 0.55),
    "horizontal_stripes": lambda u, v: (_box(u, v) <= 0.9) & _stripes(v),
    "vertical_stripes": lambda u, v: (_box(u, v) <= 0.9) & _stripes(u),
    "half_disc": lambda u, v: (u**2 + v**2 <= 1) & (v >= -0.1),
    "checkerboard": lambda u, v: (
        (_box(u, v) <= 0.9) & ((torch.floor((u + 1) * 2) + torch.floor((v + 1) * 2)).remainder(2) == 0)
    ),
    "ellipse": lambda u, v: u**2 + (v / 0.5) ** 2 <= 1,
    "crescent": lambda u, v: (u**2 + v**2 <= 1) & ((u - 0.45) ** 2 + v**2 > 0.65),
}


def generate_shapes(
    num_images: int, num_classes: int, image_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) uint8 and targets (N,), classes balanced to within one image.

    Vectorised over images; each class's mask is evaluated only on that class's images.
    """
    shape_masks = list(SHAPES.values())[:num_classes]
    targets = (torch.arange(num_images) % num_classes)[torch.randperm(num_images, generator=generator)]
    radius = image_size * torch.empty(num_images).uniform_(*RADIUS_RANGE, generator=generator)
    # Centres keep the shape's bounding box (±radius) inside the image.
    free_space = image_size - 2 * radius[:, None]
    centre = radius[:, None] + free_space * torch.rand(num_images, 2, generator=generator)
    background = torch.rand(num_images, 3, generator=generator)
    shift = torch.empty(num_images, 3).uniform_(*COLOUR_SHIFT_RANGE, generator=generator)
    foreground = (background + shift).remainder(1.0)

    pixel_centres = torch.arange(image_size, dtype=torch.float32) + 0.5
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    chunk = max(1, PIXELS_PER_CHUNK // image_size**2)
    for start in range(0, num_images, chunk):
        part = slice(start, min(start + chunk, num_images))
        u = (pixel_centres[None, None, :] - centre[part, 0, None, None]) / radius[part, None, None]
        v = (pixel_centres[None, :, None] - centre[part, 1, None, None]) / radius[part, None, None]
        mask = torch.zeros(u.shape[0], image_size, image_size, dtype=torch.bool)
        part_targets = targets[part]
        for class_index in part_targets.unique().tolist():
            chosen = part_targets == class_index
            mask[chosen] = shape_masks[class_index](u[chosen], v[chosen])
        colours = torch.where(mask[:, None], foreground[part, :, None, None], background[part, :, None, None])
        colours += NOISE_STD * torch.randn(colours.shape, generator=generator)
        images[part] = colours.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return images, targets


def load_synthetic(
    split: str,
    root: str | None = None,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    num_images: int | None = None,
    seed: int = 0,
) -> ImageTensorDataset:
    """Generated shapes, one class per shape; the same arguments always give the same images.

    Args:
        split: "train" or "test"; each split has its own generator seed, so they share no images.
        root: Unused (nothing is read from disk).
        num_classes: Number of shape classes, at most len(SHAPES).
        image_size: Height and width S of the images (N, 3, S, S).
        num_images: Images in the split; default 5,000 for train and 1,000 for test.
        seed: Base seed of the generator.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"synthetic num_classes={num_classes} must be between 2 and {len(SHAPES)}")
    if image_size < 4:
        raise ValueError(f"synthetic image_size={image_size} must be at least 4")
    num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
    if num_images < 1:
        raise ValueError(f"synthetic num_images={num_images} must be at least 1")
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split))
    images, targets = generate_shapes(num_images, num_classes, image_size, generator)
    return ImageTensorDataset(images, targets, list(SHAPES)[:num_classes])
