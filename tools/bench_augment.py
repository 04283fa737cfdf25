"""Views per second of ssl_toolkit's augmentation against lightly's SimCLRTransform, on the same images.

    .venv/bin/python tools/bench_augment.py                    # 32 and 224 px, 3 rounds of 2 s per contender
    .venv/bin/python tools/bench_augment.py --sizes 224 --seconds 5 --rounds 5 --markdown

Contenders, all with the SimCLR preset's parameters at that size (crop area (0.08, 1), flip 0.5, colour
jitter of strength 1 with p = 0.8, grayscale 0.2, blur with p = 0.5 from 96 px up, none below):

- `ours CPU`: `PerImageViews` on uint8 (C, H, W) tensors decoded once, as `ImageTensorDataset` stores them.
- `ours CPU, channels-last images`: the same on images stored (H, W, C) in memory (same tensor shape):
  torch's uint8 resize works channels-last, so this storage spares the transpose of each crop.
- `torchvision v2`: the plain `v2.Compose` of the same steps on the same uint8 tensors, for reference.
- `lightly`: lightly's `SimCLRTransform` (blur set to the preset's) on the PIL images a dataset of decoded
  images would hand it.
- `ours GPU path`: `BatchViews` (kornia) on uint8 batches of `--gpu-batch` images, on CUDA when available
  (synchronised before the clock stops) and on the CPU otherwise.

Method. Single process, `torch.set_num_threads(1)`: every CPU figure is views/s per core. Each contender
runs 2 views per image over the image list, round-robin, for `--seconds`, after a warm-up; `--rounds`
rounds interleave the contenders (so a noisy neighbour hits all of them alike) and the median round is
reported. Images are synthetic photo-like content (smooth colour fields, a few flat shapes, grain): at
32 px 32×32 like CIFAR, at 224 px of random sides in 256..320 (the GPU path, which needs one size per
batch, gets 288×288 images of the same kind).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssl_toolkit.kinds.images import BatchViews, PerImageViews, preset_views

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, lightly's default normalisation
STD = (0.229, 0.224, 0.225)
SEED = 0
N_VIEWS = 2


def photo_like_images(count: int, sides: tuple[int, int], seed: int = SEED) -> list[torch.Tensor]:
    """uint8 (3, H, W) images, each side uniform in `sides`: smooth colour fields, flat shapes and grain."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        height, width = torch.randint(sides[0], sides[1] + 1, (2,), generator=generator).tolist()
        coarse = torch.rand(1, 3, 6, 6, generator=generator)
        image = torch.nn.functional.interpolate(
            coarse, size=(height, width), mode="bicubic", align_corners=False
        )[0]
        rows = torch.arange(height).view(-1, 1) / height
        columns = torch.arange(width).view(1, -1) / width
        for _ in range(4):
            centre_y, centre_x, radius_y, radius_x = (torch.rand(4, generator=generator) * 0.5 + 0.1).tolist()
            inside = ((rows - centre_y) / radius_y) ** 2 + ((columns - centre_x) / radius_x) ** 2 < 0.25
            image[:, inside] = torch.rand(3, 1, generator=generator)
        image += 0.04 * torch.randn(image.shape, generator=generator)
        images.append(image.clamp_(0, 1).mul_(255).round_().to(torch.uint8))
    return images


def machine_description() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kib / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{package} {importlib.metadata.version(package)}"
        for package in ("torch", "torchvision", "kornia", "lightly", "pillow")
    )
    gpu = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (GPU path measured on the CPU)"
    )
    return [
        f"machine: {cpu}, {os.cpu_count()} cores ({cores} usable){memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        f"{versions}; torch threads {torch.get_num_threads()}",
        f"GPU: {gpu}",
    ]


def views_per_second(run_once: Callable[[], int], seconds: float) -> float:
    """Calls `run_once` (which returns how many views it made) until `seconds` have passed."""
    views, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        views += run_once()
    return views / elapsed


def per_image(transform: Callable, images: list) -> Callable[[], int]:
    state = {"next": 0}

    def run_once() -> int:
        image = images[state["next"] % len(images)]
        state["next"] += 1
        return len(transform(image))

    return run_once


def contenders(size: int, args: argparse.Namespace) -> dict[str, Callable[[], int]]:
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from torchvision.transforms import v2

    sides = (size, size) if size < 96 else (256, 320)
    images = photo_like_images(args.images, sides)
    views = preset_views("simclr", image_size=size, channels=3, mean=MEAN, std=STD, n_views=N_VIEWS)
    ours = PerImageViews(views)
    channels_last = [image.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0] for image in images]

    view = views[0]
    steps = [
        v2.RandomResizedCrop(size, scale=view.scale, antialias=True),
        v2.RandomHorizontalFlip(view.flip_p),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=view.jitter_p),
        v2.RandomGrayscale(view.grayscale_p),
    ]
    if view.blur_p:
        steps.append(v2.RandomApply([v2.GaussianBlur(view.blur_kernel_size, view.blur_sigma)], p=view.blur_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    plain = v2.Compose(steps)

    lightly = SimCLRTransform(
        input_size=size,
        min_scale=view.scale[0],
        gaussian_blur=view.blur_p,
        normalize={"mean": list(MEAN), "std": list(STD)},
    )
    pil_images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu_batch = args.gpu_batch or (512 if device.type == "cuda" else 32)
    batch_side = size if size < 96 else 288
    batch = torch.stack(photo_like_images(gpu_batch, (batch_side, batch_side), seed=SEED + 1)).to(device)
    gpu_views = BatchViews(views)

    def gpu_once() -> int:
        out = gpu_views(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(out) * len(batch)

    return {
        "ours CPU": per_image(ours, images),
        "ours CPU, channels-last images": per_image(ours, channels_last),
        "torchvision v2": per_image(lambda image: [plain(image) for _ in range(N_VIEWS)], images),
        "lightly": per_image(lightly, pil_images),
        f"ours GPU path ({device.type}, batch {gpu_batch})": gpu_once,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=128, help="distinct source images per size")
    parser.add_argument("--gpu-batch", type=int, default=None, help="default: 512 on CUDA, 32 on the CPU")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    header = [
        *machine_description(),
        f"single process, views/s per core; median of {args.rounds} interleaved rounds of {args.seconds:g} s "
        f"per contender; {N_VIEWS} views per image",
    ]
    rows = []
    for size in args.sizes:
        runs = contenders(size, args)
        for run_once in runs.values():  # warm-up: first calls allocate and pick kernels
            for _ in range(3):
                run_once()
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run_once in runs.items():
                rates[name].append(views_per_second(run_once, args.seconds))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for name, rate in medians.items():
            rows.append((size, name, rate, rate / medians["lightly"]))

    if args.markdown:
        print("\n".join(f"    {line}" for line in header))
        print("\n| size (px) | pipeline | views/s | × lightly |\n|---:|---|---:|---:|")
        for size, name, rate, ratio in rows:
            print(f"| {size} | {name} | {rate:,.0f} | {ratio:.2f} |")
    else:
        print("\n".join(header))
        print(f"\n{'size':>5}  {'pipeline':<40} {'views/s':>10} {'× lightly':>10}")
        for size, name, rate, ratio in rows:
            print(f"{size:>5}  {name:<40} {rate:>10,.0f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
