"""Throughput and peak memory of the toolkit's own SSL training step beside a plain supervised step, and how
far the full pretraining loop is from that bare step, in one run.

    .venv/bin/python tools/bench_train.py --backbone resnet18 --cifar-stem --image-size 32 --batch-size 64
    .venv/bin/python tools/bench_train.py --device cuda --backbone resnet50 --image-size 224 \
        --batch-size 256 --precision bf16 --channels-last

Every part is built from one config: `--recipe` (default: SimCLR's CIFAR-10 recipe) on the generated
`synthetic` images, with the backbone, image size, batch, precision and memory layout given here and any
`--set section.key=value`.

SSL step: what pretraining runs per batch, built as pretraining builds it: the encoder, loss and optimiser
from `ssl_toolkit.build` (`encoders`, `loss`, `optimizer`), prepared by an `Accelerator` with the config's
precision, then `train_step(accelerator, ContrastiveObjective(encoder, loss), 0)` (every view embedded, the
loss, the backward) and the optimiser step. Supervised step: the same backbone (built the same way) + a
linear classifier to 1,000 classes, cross-entropy on the first view, backward, the same optimiser. Both
run on one batch of B images whose views the config's view pipeline made once, before the timing, and keep
in memory: the steps are timed without data loading or view making. The SSL step processes 2B views (with
SimCLR's two), so the figure to compare is views/s. Each step kind runs in a process of its own
(`ssl_toolkit.process.launch.Subprocess`), the median of `--steps` steps after `--warmup`.

Peak memory (`ssl_toolkit.process.memory`, the measure pretraining's summary uses): on CUDA the most memory
PyTorch's tensors held, elsewhere the process's resident-set high-water mark (VmHWM). "above start" is its
rise over what the process held when the warm-up began (views made, model built, no optimiser state yet,
the high-water mark restarted there); "process" is the whole process's.

Pretraining loop (`--loop-steps`, 0 to skip): `python -m ssl_toolkit.pretrain` of the same config for that
many steps, logging every step: data loading, view making, the step, the optimiser, the online probe and
the logging, the final checkpoint and encoder. Its images/s are the median of its steps' samples/s from the
second on (metrics.jsonl; each step's time from the previous step's log line), and pretrain.json's
samples/s over the whole session (start-up, first step and final save included); each is set beside the
bare SSL step's images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ssl_toolkit.process.launch import Command, Subprocess
from ssl_toolkit.process.outcome import run_entry_point
from ssl_toolkit.process.status import Status

DEFAULT_RECIPE = "cifar10_simclr_resnet18"
SUPERVISED_CLASSES = 1000


def overrides(args: argparse.Namespace) -> list[str]:
    """The config both the bare steps and the pretraining loop run."""
    return [
        "data.name=synthetic",
        f"data.image_size={args.image_size}",
        f"model.backbone={args.backbone}",
        f"model.cifar_stem={str(args.cifar_stem).lower()}",
        f"train.batch_size={args.batch_size}",
        f"train.mixed_precision={args.precision}",
        f"train.channels_last={str(args.channels_last).lower()}",
        "log.trackers=[]",
        "log.knn_every=0",
        *args.set,
    ]


# -- one step kind, in a worker ------------------------------------------------------------------------------
def measure_step(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch import nn

    from ssl_toolkit import build
    from ssl_toolkit.config import load_config
    from ssl_toolkit.kinds import create_data_kind
    from ssl_toolkit.process.memory import peak_memory_mb, reset_peak_memory
    from ssl_toolkit.training.objective import ContrastiveObjective, train_step

    # The batch's views are made once, in this process: no DataLoader workers.
    config = load_config(args.recipe, [*overrides(args), "data.num_workers=0"])
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=config.train.mixed_precision)
    device = accelerator.device
    set_seed(config.seed)
    kind = create_data_kind(config)
    dataset = kind.pretraining_dataset()
    data = kind.training_data(dataset, device)
    loader, _ = build.train_loader(config, data, 1)
    inputs, _ = next(iter(loader))
    inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else [view.to(device) for view in inputs]
    views = kind.prepare_batch([view.to(device) for view in data.views(inputs)])
    encoder, trained_encoder = build.encoders(config, kind, 1, device)
    if args.kind == "ssl":
        model = ContrastiveObjective(trained_encoder, build.loss(config, dataset))
    else:
        model = kind.place_encoder(
            nn.Sequential(encoder.backbone, nn.Linear(encoder.feature_dim, SUPERVISED_CLASSES))
        )
        targets = torch.randint(0, SUPERVISED_CLASSES, (config.train.batch_size,), device=device)
    optimizer, _ = build.optimizer(config, model, 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    ssl_step = train_step(accelerator, model, 0) if args.kind == "ssl" else None  # pretraining's own step

    def step() -> None:
        if args.kind == "ssl":
            ssl_step(views, None)
        else:
            with accelerator.autocast():
                loss = F.cross_entropy(model(views[0]), targets)
            accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    held_mib, restarted = reset_peak_memory(device)
    for _ in range(args.warmup):
        step()
    synchronize()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - started)
    peak_mib, memory_kind = peak_memory_mb(device)
    seconds = statistics.median(times)
    views_per_image = len(views) if args.kind == "ssl" else 1
    return {
        "kind": args.kind,
        "step_s": seconds,
        "images_per_s": config.train.batch_size / seconds,
        "views_per_s": views_per_image * config.train.batch_size / seconds,
        "peak_above_start_mib": peak_mib - held_mib if restarted else None,
        "process_peak_mib": peak_mib,
        "memory_kind": memory_kind,
        "optimizer": config.optim.name,
    }


# -- the parent ----------------------------------------------------------------------------------------------
def child_environment(args: argparse.Namespace) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}


def run_step_kind(kind: str, args: argparse.Namespace, folder: Path) -> dict:
    """One step kind in a process of its own: its figures, or its status and message."""
    result = folder / f"{kind}.json"
    command = Command.of_script(
        Path(__file__).resolve(), [*sys.argv[1:], "--kind", kind, "--result", str(result)]
    )
    finished = Subprocess().run(command, log=folder / f"{kind}.log", environment=child_environment(args))
    if finished.outcome.status is Status.OK and result.is_file():
        return json.loads(result.read_text())
    return {"kind": kind, "status": finished.outcome.status, "message": finished.outcome.message}


def run_loop(args: argparse.Namespace, folder: Path) -> dict:
    """`--loop-steps` steps of `ssl_toolkit.pretrain` on the same config: its samples/s and peak memory."""
    from ssl_toolkit.run_dir import RunDirectory

    run = folder / "loop"
    loop = [
        f"train.max_steps={args.loop_steps}",
        "train.checkpoint_every=1000000",  # the final checkpoint only
        "log.every=1",
        f"run.output_dir={folder}",
        f"run.name={run.name}",
    ]
    command = Command.of_module("ssl_toolkit.pretrain", [args.recipe, *overrides(args), *loop])
    finished = Subprocess().run(command, log=folder / "loop.log", environment=child_environment(args))
    if finished.outcome.status is not Status.OK:
        return {"status": finished.outcome.status, "message": finished.outcome.message}
    summary = RunDirectory(run).read_summary()
    steady = [record["samples_per_s"] for record in RunDirectory(run).read_metrics()[1:]]
    return {
        "steady_images_per_s": statistics.median(steady) if steady else None,
        "session_images_per_s": summary["samples_per_s"],
        "process_peak_mib": summary["peak_memory_mb"],
        "steps": summary["steps"],
        "seconds": summary["seconds"],
    }


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def report(args: argparse.Namespace, results: dict, loop: dict | None) -> None:
    import torch

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    optimizer = next((r["optimizer"] for r in results.values() if "optimizer" in r), "?")
    print(
        f"{args.backbone}{' (CIFAR stem)' if args.cifar_stem else ''}, {args.image_size} px, batch "
        f"{args.batch_size}, precision {args.precision}, channels_last {args.channels_last}, recipe "
        f"{args.recipe} on synthetic images, optimiser {optimizer}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.steps} steps "
        f"after {args.warmup}"
    )
    print("| step | s/step | images/s | views/s | peak above start (MiB) | process peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        if "status" in r:
            print(f"| {kind} | {r['status'].phrase}: {r['message']} | | | | |")
            continue
        print(
            f"| {kind} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['views_per_s']:.1f} | "
            f"{_mib(r['peak_above_start_mib'])} | {_mib(r['process_peak_mib'])} |"
        )
    ssl, supervised = results["ssl"], results["supervised"]
    if "status" not in ssl and "status" not in supervised:
        print(f"SSL views/s ÷ supervised views/s: {ssl['views_per_s'] / supervised['views_per_s']:.2f}")
    if loop is None:
        return
    if "status" in loop:
        print(f"pretraining loop: {loop['status'].phrase}: {loop['message']}")
        return
    print(
        f"pretraining loop ({loop['steps']} steps, {loop['seconds']:.1f} s): "
        f"{loop['steady_images_per_s']:.1f} images/s per step from the second on, "
        f"{loop['session_images_per_s']:.1f} over the session (pretrain.json), "
        f"process peak {_mib(loop['process_peak_mib'])} MiB"
    )
    if "status" not in ssl:
        bare = ssl["images_per_s"]
        print(
            f"pretraining loop images/s ÷ bare SSL step images/s: {loop['steady_images_per_s'] / bare:.2f} "
            f"per step, {loop['session_images_per_s'] / bare:.2f} over the session"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe (path or packaged name)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loop-steps", type=int, default=10, help="pretraining loop steps (0: skip it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--kind", choices=["ssl", "supervised"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:
        sys.exit(run_entry_point(lambda: args.result.write_text(json.dumps(measure_step(args)))))

    with tempfile.TemporaryDirectory(prefix="bench_train_") as folder:
        results = {kind: run_step_kind(kind, args, Path(folder)) for kind in ("supervised", "ssl")}
        loop = run_loop(args, Path(folder)) if args.loop_steps > 0 else None
    report(args, results, loop)


if __name__ == "__main__":
    main()
