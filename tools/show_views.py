"""Write a PNG grid of a recipe's augmented views: one row per image, the original first, then its views.

    .venv/bin/python tools/show_views.py quickstart --out quickstart.png
    .venv/bin/python tools/show_views.py fashion_mnist_simclr_cpu --out views.png
    .venv/bin/python tools/show_views.py quickstart loss.name=supcon augment.small_crops=4 --device gpu

The views are the recipe's (with its `section.key=value` overrides), exactly as pretraining resolves them.
Small images are enlarged (nearest neighbour) so that each cell is at least `--min-cell` px wide.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torchvision.io import write_png

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.kinds.images.views import BatchViews, PerImageViews, eval_transform, view_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="a recipe file or packaged recipe name, e.g. quickstart")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. augment.n_views=4")
    parser.add_argument("--num-images", type=int, default=8, help="rows")
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default="cpu", help="per-image or per-batch views"
    )
    parser.add_argument("--min-cell", type=int, default=96, help="enlarge until a cell is this wide")
    parser.add_argument("--out", type=Path, default=Path("views.png"))
    args = parser.parse_args(argv)

    try:
        config = load_config(args.recipe, args.overrides)
        kind = create_data_kind(config)
        dataset = kind.pretraining_dataset()
        views = kind.view_params()
    except ConfigError as error:
        parser.error(str(error))
    stats = kind.preprocessing()
    image_size = config.data.image_size

    torch.manual_seed(config.seed)
    chosen = torch.randperm(len(dataset))[: args.num_images]
    images = [dataset.load_image(int(index))[0] for index in chosen]  # uint8 (C, H, W) each
    if args.device == "gpu":
        if len({image.shape for image in images}) > 1:
            parser.error(
                "--device gpu takes batches of one image size; these images differ (use --device cpu)"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("no CUDA device: running the batch pipeline (kornia) on the CPU")
        augmented = [view.cpu() for view in BatchViews(views)(torch.stack(images).to(device))]
    else:
        per_image = [PerImageViews(views)(image) for image in images]
        augmented = [torch.stack(view) for view in zip(*per_image, strict=True)]
    originals = torch.stack(
        [eval_transform(image_size, stats["mean"], stats["std"])(image) for image in images]
    )

    grid = view_grid([originals, *augmented], stats["mean"], stats["std"], max_images=args.num_images)
    cell = max(view.shape[-1] for view in augmented)
    zoom = max(1, math.ceil(args.min_cell / cell))
    grid = grid.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid, str(args.out))
    print(
        f"wrote {args.out}: {len(images)} images of {config.data.name} (original, then {len(augmented)} "
        f"views), {config.augment.preset} at {image_size} px, {args.device} pipeline, enlarged {zoom}×"
    )


if __name__ == "__main__":
    main()
