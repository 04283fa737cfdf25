"""Write a PNG grid of augmented views: one row per image, the original first, then its views.

    .venv/bin/python tools/show_views.py --dataset digits --preset simclr --out views.png
    .venv/bin/python tools/show_views.py --image-size 16 --min-scale 0.3 --flip-p 0 --out quickstart.png
    .venv/bin/python tools/show_views.py --dataset cifar10 --root data/cifar10 --small-crops 4 --device gpu

Preset options left out take the preset's value for the image size, as in a recipe's `augment` section.
Small images are enlarged (nearest neighbour) so each cell is at least `--min-cell` px wide.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torchvision.io import write_png

from ssl_toolkit.augment import PRESETS, BatchViews, PerImageViews, eval_transform, preset_views, view_grid
from ssl_toolkit.data import create_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", help="a name registered in ssl_toolkit.data")
    parser.add_argument("--root", default=None, help="the dataset's data.root")
    parser.add_argument("--preset", default="simclr", choices=PRESETS)
    parser.add_argument("--image-size", type=int, default=None, help="view side in px (default: the images')")
    parser.add_argument("--n-views", type=int, default=2)
    parser.add_argument("--num-images", type=int, default=8, help="rows")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="which implementation")
    parser.add_argument("--strength", type=float, default=1.0, help="colour-jitter strength s")
    parser.add_argument("--min-scale", type=float, default=None)
    parser.add_argument("--flip-p", type=float, default=None)
    parser.add_argument("--blur-p", type=float, default=None)
    parser.add_argument("--solarize-p", type=float, default=None)
    parser.add_argument("--small-crops", type=int, default=0)
    parser.add_argument("--small-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-cell", type=int, default=96, help="enlarge until a cell is this wide")
    parser.add_argument("--out", type=Path, default=Path("views.png"))
    args = parser.parse_args(argv)

    try:
        dataset = create_dataset(args.dataset, args.root, split="train")
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--dataset {args.dataset}: {error}")
    mean, std = dataset.channel_stats()
    image_size = args.image_size or dataset.fixed_size
    if image_size is None:
        parser.error(f"the images of {args.dataset} differ in size: pass --image-size")
    views = preset_views(
        args.preset,
        image_size=image_size,
        channels=dataset.channels,
        mean=mean,
        std=std,
        n_views=args.n_views,
        strength=args.strength,
        min_scale=args.min_scale,
        flip_p=args.flip_p,
        blur_p=args.blur_p,
        solarize_p=args.solarize_p,
        small_crops=args.small_crops,
        small_size=args.small_size,
    )

    torch.manual_seed(args.seed)
    chosen = torch.randperm(len(dataset))[: args.num_images]
    images = [dataset.load_image(int(index))[0] for index in chosen]  # uint8 (C, H, W) each
    if args.device == "gpu":
        if len({image.shape for image in images}) > 1:
            parser.error(
                "--device gpu takes batches of one image size; these images differ (use --device cpu)"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("no CUDA device: running the GPU implementation (kornia) on the CPU")
        augmented = [view.cpu() for view in BatchViews(views)(torch.stack(images).to(device))]
    else:
        per_image = [PerImageViews(views)(image) for image in images]
        augmented = [torch.stack(view) for view in zip(*per_image, strict=True)]
    originals = torch.stack([eval_transform(image_size, mean, std)(image) for image in images])

    grid = view_grid([originals, *augmented], mean, std, max_images=args.num_images)
    cell = max(view.shape[-1] for view in augmented)
    zoom = max(1, math.ceil(args.min_cell / cell))
    grid = grid.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid, str(args.out))
    print(
        f"wrote {args.out}: {len(images)} images of {args.dataset} (original, then {len(augmented)} views), "
        f"{args.preset} at {image_size} px on the {args.device} path, enlarged {zoom}×"
    )


if __name__ == "__main__":
    main()
