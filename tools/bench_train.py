"""Throughput and peak memory of the full SSL step beside a plain supervised step, in one run.

    .venv/bin/python tools/bench_train.py --backbone resnet18 --cifar-stem --image-size 32 --batch-size 64
    .venv/bin/python tools/bench_train.py --device cuda --backbone resnet50 --image-size 224 \
        --batch-size 256 --precision bf16 --channels-last

SSL step: two views made from a uint8 batch by the batch view pipeline (`BatchViews`, kornia, on the device),
both embedded in one forward of backbone + projection head, NT-Xent, backward, optimiser step.
Supervised step: one view of the same pipeline, the same backbone + a linear classifier, cross-entropy,
backward, optimiser step. Both get the same batch of B images; the SSL step processes 2B views, so the
figure to compare is views/s (images/s per view). Each step kind runs in its own subprocess so
its peak memory is its own: CUDA max_memory_allocated, or on CPU the rise of the resident set (VmHWM) over
the resident set before the first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULT_PREFIX = "BENCH_TRAIN "


def _resident_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(args: argparse.Namespace) -> dict:
    import torch
    from torch import nn

    from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
    from ssl_toolkit.kinds.images.views import BatchViews, preset_views
    from ssl_toolkit.losses import NTXentLoss

    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = EncoderSpec(backbone=args.backbone, in_chans=3, cifar_stem=args.cifar_stem)
    encoder = create_encoder(spec).to(device)
    views_per_image = 2 if args.kind == "ssl" else 1
    view_params = preset_views(
        "simclr",
        image_size=args.image_size,
        channels=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        n_views=views_per_image,
    )
    make_views = BatchViews(view_params).to(device)
    if args.kind == "ssl":
        model, loss_fn = encoder, NTXentLoss(temperature=0.1)
    else:
        model = nn.Sequential(encoder.backbone, nn.Linear(encoder.feature_dim, 1000)).to(device)
        loss_fn = nn.CrossEntropyLoss()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    side = round(args.image_size * 8 / 7)
    images = torch.randint(0, 256, (args.batch_size, 3, side, side), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 1000, (args.batch_size,), device=device)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def step() -> None:
        views = [v.contiguous(memory_format=memory_format) for v in make_views(images)]
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            if args.kind == "ssl":
                _h, z = model(torch.cat(views))
                loss = loss_fn(*z.chunk(2))
            else:
                loss = loss_fn(model(views[0]), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    before = _resident_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    for _ in range(args.warmup):
        step()
    synchronize()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
    else:
        peak = _resident_mib("VmHWM") - before
    seconds = statistics.median(times)
    return {
        "kind": args.kind,
        "step_s": seconds,
        "images_per_s": args.batch_size / seconds,
        "views_per_s": views_per_image * args.batch_size / seconds,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kind", choices=["ssl", "supervised"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:
        print(RESULT_PREFIX + json.dumps(_worker(args)), flush=True)
        return

    import torch

    results = {}
    for kind in ("supervised", "ssl"):
        command = [sys.executable, __file__, *sys.argv[1:], "--kind", kind]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        line = next(x for x in output.splitlines() if x.startswith(RESULT_PREFIX))
        results[kind] = json.loads(line[len(RESULT_PREFIX) :])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"{args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, {args.image_size} px, batch "
        f"{args.batch_size}, precision {args.precision}, channels_last {args.channels_last}, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps"
    )
    print("| step | s/step | images/s | views/s | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in results.items():
        print(
            f"| {kind} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['views_per_s']:.1f} | "
            f"{r['peak_mib']:.0f} |"
        )
    ratio = results["ssl"]["views_per_s"] / results["supervised"]["views_per_s"]
    print(f"SSL views/s ÷ supervised views/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
