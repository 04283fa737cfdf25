"""Pretrain a recipe's encoder with lightly's SimCLR pipeline for a fixed wall-clock budget, then probe it.

The peer contender for BENCHMARKS.md's evaluation section: the same encoder, optimiser, precision, memory
layout, batch size, temperature, seed and view parameters (crop area, flip, jitter, grayscale, blur) as
the recipe, but lightly's `SimCLRTransform` (PIL images, in DataLoader workers) and lightly's `NTXentLoss`
in a plain training loop, on the CPU.
Training stops when the budget is spent; warmup and cosine decay follow the elapsed fraction of the budget,
so the schedule completes however many steps fit. The encoder is saved as a run directory that
`ssl-toolkit probe` and `ssl-toolkit knn` read like any other, and both are run on it, so the two
contenders are measured by the same evaluation code.

    .venv/bin/python tools/peer_lightly_pretrain.py recipes/fashion_mnist_simclr_cpu.yaml --minutes 21.3

Needs lightly (`pip install -e '.[dev]'`). Works for single-image-size datasets held in memory
(digits, mnist, fashion_mnist, cifar10/100, stl10, synthetic).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from lightly.loss import NTXentLoss
from lightly.transforms import SimCLRTransform
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import to_pil_image

from ssl_toolkit import build
from ssl_toolkit.config import load_config, save_config
from ssl_toolkit.encoder_file import save_run_encoder
from ssl_toolkit.eval.knn import run_knn
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.optim import warmup_cosine_lr
from ssl_toolkit.run_dir import RunDirectory


class PILViews(Dataset):
    """Items of an in-memory uint8 dataset as PIL images through `transform` (a list of views)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset.load_image(index)
        return self.transform(to_pil_image(image)), target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the training loop")
    parser.add_argument("--output-dir", default="runs/peer")
    parser.add_argument("--name", default="lightly")
    parser.add_argument("overrides", nargs="*", help="section.key=value applied to the recipe")
    args = parser.parse_args()

    config = load_config(
        args.recipe, [*args.overrides, f"run.output_dir={args.output_dir}", f"run.name={args.name}"]
    )
    run = RunDirectory(config.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    kind = create_data_kind(config)
    dataset = kind.pretraining_dataset()
    # The recipe's views as pretraining resolves them, handed to lightly's transform parameter by parameter.
    views = kind.view_params()
    if len(views) != 2 or views[0].solarize_p > 0:
        sys.exit(
            "lightly's SimCLRTransform makes two views, no solarize: set augment.n_views=2, no small crops"
        )
    view = views[0]
    transform = SimCLRTransform(
        input_size=view.size,
        cj_prob=view.jitter_p,
        cj_strength=view.jitter_strength,
        min_scale=view.scale[0],
        random_gray_scale=view.grayscale_p,
        gaussian_blur=view.blur_p,
        sigmas=view.blur_sigma,
        hf_prob=view.flip_p,
        normalize={"mean": list(view.mean), "std": list(view.std)},
    )
    loader = DataLoader(
        PILViews(dataset, transform),
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.data.num_workers,
        persistent_workers=config.data.num_workers > 0,
    )
    encoder = kind.create_encoder().train()
    loss_fn = NTXentLoss(temperature=config.loss.options["temperature"])
    optimizer, peak_lr = build.optimizer(config, encoder, num_processes=1)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)

    budget_ms = round(args.minutes * 60_000)
    warmup_ms = round(budget_ms * config.optim.warmup_epochs / config.train.epochs)
    steps, last_loss = 0, None
    started = time.perf_counter()
    elapsed_ms = 0
    while elapsed_ms < budget_ms:
        for (view0, view1), _ in loader:
            elapsed_ms = round((time.perf_counter() - started) * 1000)
            if elapsed_ms >= budget_ms:
                break
            lr = warmup_cosine_lr(elapsed_ms, peak_lr=peak_lr, warmup_steps=warmup_ms, total_steps=budget_ms)
            for group in optimizer.param_groups:
                group["lr"] = lr
            (views,) = kind.prepare_batch([torch.cat([view0, view1])])
            with torch.autocast(
                "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                z0, z1 = encoder(views)[1].float().chunk(2)
            loss = loss_fn(z0, z1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % 50 == 0:
                last_loss = loss.item()
                print(
                    f"step {steps}  {elapsed_ms / 1000:.0f}s  loss {last_loss:.4f}  lr {lr:.3g}", flush=True
                )
    seconds = time.perf_counter() - started

    save_config(config, run.config)
    save_run_encoder(kind, encoder, run.encoder, step=steps)
    probe = run_probe(run.path)
    knn = run_knn(run.path)
    row = {
        "contender": "lightly SimCLRTransform + NTXentLoss",
        "pretrain_seconds": seconds,
        "steps": steps,
        "epochs": steps / len(loader),
        "views_per_s": 2 * steps * config.train.batch_size / seconds,
        "last_loss": last_loss,
        "probe_top1": probe["top1"],
        "probe_auroc": probe["auroc"],
        "knn_top1": knn["top1"],
    }
    (run.path / "peer.json").write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
