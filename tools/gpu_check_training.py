"""The GPU check's sections that train: training_step, grad_cache and pretraining (see
`tools/gpu_check.py`; the sizes, the report and the shared helpers are in `gpu_check_sections.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gpu_check_sections import (
    MEAN,
    STD,
    TEMPERATURE,
    Report,
    Scale,
    Skip,
    _device,
    _free_memory,
    _median_seconds,
    _memory,
    _peak_memory_of,
    _require,
    _synchronize,
)

from ssl_toolkit.process.launch import AccelerateLaunch, Command, Finished, Subprocess
from ssl_toolkit.process.status import OutOfMemory, Status, as_failure

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# training_step: the SSL step beside the supervised step
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _StepPair:
    """The SSL and the supervised training step of one backbone, which both steps share."""

    device: object
    encoder: object
    classifier: object
    steps: dict[str, Callable[[], None]]  # "ssl", "supervised": one training step each
    optimizers: tuple

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)


def _build_step_pair(
    scale: Scale, backbone: str, image_size: int, cifar_stem: bool, images: int
) -> _StepPair:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from torch import nn

    from ssl_toolkit.kinds.images import BatchViews, EncoderSpec, create_encoder, preset_views
    from ssl_toolkit.losses import NTXentLoss
    from ssl_toolkit.training.objective import ContrastiveObjective, plain_step

    accelerator = Accelerator(mixed_precision=scale.precision)
    device = accelerator.device
    layout = torch.channels_last
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec(backbone=backbone, in_chans=3, cifar_stem=cifar_stem))
    encoder = encoder.to(device, memory_format=layout)
    objective = ContrastiveObjective(encoder, NTXentLoss(temperature=TEMPERATURE))
    classifier = nn.Sequential(encoder.backbone, nn.Linear(encoder.feature_dim, 1000)).to(device)
    ssl_optimizer = torch.optim.SGD(objective.parameters(), lr=1e-3, momentum=0.9)
    supervised_optimizer = torch.optim.SGD(classifier.parameters(), lr=1e-3, momentum=0.9)
    side = image_size if image_size < 96 else round(image_size * 8 / 7)

    def pipeline(n_views: int):
        views = preset_views("simclr", image_size=image_size, channels=3, mean=MEAN, std=STD, n_views=n_views)
        return BatchViews(views).to(device)

    ssl_views, supervised_views = pipeline(2), pipeline(1)
    # Equal views per step: the SSL step's B images × 2 views against 2B images × 1 view.
    ssl_images = torch.randint(0, 256, (images, 3, side, side), dtype=torch.uint8, device=device)
    supervised_images = torch.randint(0, 256, (2 * images, 3, side, side), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 1000, (2 * images,), device=device)
    ssl_train = plain_step(accelerator, objective)

    def ssl_step() -> None:
        views = [v.contiguous(memory_format=layout) for v in ssl_views(ssl_images)]
        ssl_train(views, None)
        ssl_optimizer.step()
        ssl_optimizer.zero_grad(set_to_none=True)

    def supervised_step() -> None:
        view = supervised_views(supervised_images)[0].contiguous(memory_format=layout)
        with accelerator.autocast():
            loss = F.cross_entropy(classifier(view), targets)
        accelerator.backward(loss)
        supervised_optimizer.step()
        supervised_optimizer.zero_grad(set_to_none=True)

    steps = {"ssl": ssl_step, "supervised": supervised_step}
    return _StepPair(device, encoder, classifier, steps, (ssl_optimizer, supervised_optimizer))


def _time_step(step: Callable[[], None], scale: Scale, device, views_per_step: int) -> dict:
    """A training step's warm-up seconds, median seconds, views/s and peak memory; or that it ran out of
    memory."""
    try:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(scale.step_warmup):
            step()
        _synchronize(device)
        warmup_s = time.perf_counter() - started
        peak_mib = _peak_memory_of(step, device)
        seconds = _median_seconds(step, device, scale.step_repeats)
    except Exception as error:
        if not isinstance(as_failure(error), OutOfMemory):
            raise
        return {"status": "OOM"}
    return {
        "step_s": seconds,
        "views_per_s": views_per_step / seconds,
        "peak_mib": peak_mib,
        "warmup_s": warmup_s,
    }


def _step_pair(scale: Scale, backbone: str, image_size: int, cifar_stem: bool, images: int, report: Report):
    """SSL and supervised steps of one backbone, eager then compiled; their views/s and peak memory."""
    import torch

    pair = _build_step_pair(scale, backbone, image_size, cifar_stem, images)
    name = f"{backbone}{' CIFAR stem' if cifar_stem else ''} {image_size} px"
    views_per_step = 2 * images
    results = {}
    for compiled in (False, True):
        mode = f"compiled ({scale.compile_backend})" if compiled else "eager"
        if compiled:
            # The backbone both steps share, compiled once; head, classifier and losses stay eager.
            shared = torch.compile(pair.encoder.backbone, backend=scale.compile_backend)
            pair.encoder.backbone = shared
            pair.classifier[0] = shared
        row = {}
        for kind, step in pair.steps.items():
            row[kind] = _time_step(step, scale, pair.device, views_per_step)
            pair.zero_grad()
            _free_memory()
        results[mode] = row
        _report_step_pair(report, name, mode, views_per_step, row)
    report.details[name] = {"views_per_step": views_per_step, **results}


def _report_step_pair(report: Report, name: str, mode: str, views_per_step: int, row: dict) -> None:
    """The SSL step's views/s held to the supervised step's (and, compiled, the warm-up's seconds)."""
    ssl, supervised = row.get("ssl", {}), row.get("supervised", {})
    if "views_per_s" not in ssl or "views_per_s" not in supervised:
        report.add(f"{name}, {mode}", "OOM")
        return
    ratio = ssl["views_per_s"] / supervised["views_per_s"]
    value = (
        f"SSL {ssl['views_per_s']:,.0f} views/s ({_memory(ssl['peak_mib'])}), "
        f"supervised {supervised['views_per_s']:,.0f} ({_memory(supervised['peak_mib'])}): {ratio:.2f}×"
    )
    if mode != "eager":
        value += f"; warm-up incl. compilation {ssl['warmup_s'] + supervised['warmup_s']:.0f} s"
    report.held(
        f"{name}, {views_per_step} views/step, {mode}", value, "SSL ≥ 0.85× supervised", ratio >= 0.85
    )


def training_step(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    _require("kornia")
    report.details["precision"] = f"mixed_precision {scale.precision}, channels-last"
    for backbone, image_size, cifar_stem, images in scale.step_models:
        _step_pair(scale, backbone, image_size, cifar_stem, images, report)
        _free_memory()


# --------------------------------------------------------------------------------------------------
# grad_cache: its gradients against the plain step's, and its steps at a large batch
# --------------------------------------------------------------------------------------------------


def _gradient_runs(scale: Scale, device) -> tuple[Callable[[], list], Callable[[], list]]:
    """The plain and the cached step's parameter gradients on the same views from the same start, float32,
    with stochastic depth drawing from the generator of the views' device."""
    import torch

    from ssl_toolkit.kinds.images import EncoderSpec, create_encoder
    from ssl_toolkit.losses import NTXentLoss
    from ssl_toolkit.training import grad_cache
    from ssl_toolkit.training.objective import ContrastiveObjective

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    spec = EncoderSpec(backbone="resnet18", in_chans=3, backbone_args={"drop_path_rate": 0.3})
    objective = ContrastiveObjective(create_encoder(spec), NTXentLoss(temperature=TEMPERATURE)).to(device)
    initial = {k: v.clone() for k, v in objective.state_dict().items()}
    size, batch, chunk = scale.check_image_size, scale.check_batch, scale.check_chunk
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]

    def embed(chunk_views):
        return objective(chunk_views, mode="embed")

    def gradients() -> list[torch.Tensor]:
        return [p.grad.detach().clone() for p in objective.parameters() if p.grad is not None]

    def fresh() -> None:
        objective.load_state_dict(initial)
        objective.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # also seeds every CUDA generator

    def plain() -> list[torch.Tensor]:
        # One graph over the batch, embedded in the cached step's chunks so that stochastic depth draws
        # the same masks (and BatchNorm sees the same chunks).
        fresh()
        pieces = [embed([v[s : s + chunk] for v in views]) for s in range(0, batch, chunk)]
        objective.loss_of([torch.cat(parts) for parts in zip(*pieces, strict=True)]).backward()
        return gradients()

    def cached() -> list[torch.Tensor]:
        fresh()
        grad_cache.cached_backward(embed, objective.loss_of, views, chunk, buffers=objective.buffers())
        return gradients()

    return plain, cached


def _relative_difference(a: list, b: list) -> float:
    difference = sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b, strict=True))
    norm = sum(float(y.double().pow(2).sum()) for y in b)
    return (difference / norm) ** 0.5


def _gradient_check(scale: Scale, report: Report) -> None:
    """The cached step's gradients against the plain step's; and a control without the generator's
    replay, which must differ."""
    from ssl_toolkit.training import grad_cache

    device = _device()
    plain, cached = _gradient_runs(scale, device)
    reference = plain()
    replayed = _relative_difference(cached(), reference)
    replay = grad_cache._set_rng_state
    grad_cache._set_rng_state = lambda state, devices: None
    try:
        unreplayed = _relative_difference(cached(), reference)
    finally:
        grad_cache._set_rng_state = replay
    generator = "CUDA" if device.type == "cuda" else "CPU"
    batch, chunk = scale.check_batch, scale.check_chunk
    report.details["gradient_check"] = {
        "image_size": scale.check_image_size,
        "batch": batch,
        "chunk": chunk,
        "generator": generator,
        "relative_difference": replayed,
        "relative_difference_without_replay": unreplayed,
    }
    report.held(
        f"gradients cached vs plain, batch {batch}, chunk {chunk}, {generator} generator replayed",
        f"‖Δg‖/‖g‖ = {replayed:.1e}; without the replay {unreplayed:.1e}",
        "≤ 1e-4, and ≥ 100× that without the replay",
        replayed <= 1e-4 and unreplayed >= 100 * max(replayed, 1e-9),
        on_cpu=True,
    )
    if device.type != "cuda":
        report.skip("CUDA generator replay", "no CUDA device (the CPU generator's replay was checked)")


def _cache_steps(scale: Scale) -> tuple[object, object, Callable[[Callable, int, int], dict]]:
    """ResNet-18's accelerator and objective at the GradCache section's image size, and `measure(train,
    batch, repeats)`: one training step `train` on `batch` images timed, with its peak memory."""
    import torch
    from accelerate import Accelerator

    from ssl_toolkit.kinds.images import BatchViews, EncoderSpec, create_encoder, preset_views
    from ssl_toolkit.losses import NTXentLoss
    from ssl_toolkit.training.objective import ContrastiveObjective

    accelerator = Accelerator(mixed_precision=scale.precision)
    device = accelerator.device
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    layout = torch.channels_last
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec(backbone="resnet18", in_chans=3)).to(device, memory_format=layout)
    objective = ContrastiveObjective(encoder, NTXentLoss(temperature=TEMPERATURE))
    optimizer = torch.optim.SGD(objective.parameters(), lr=1e-3, momentum=0.9)
    size = scale.cache_image_size
    side = size if size < 96 else round(size * 8 / 7)
    views = preset_views("simclr", image_size=size, channels=3, mean=MEAN, std=STD, n_views=2)
    make_views = BatchViews(views).to(device)
    images = torch.randint(0, 256, (scale.cache_batch, 3, side, side), dtype=torch.uint8, device=device)

    def measure(train, batch: int, repeats: int) -> dict:
        def step() -> None:
            batch_views = [v.contiguous(memory_format=layout) for v in make_views(images[:batch])]
            train(batch_views, None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            step()
            peak_mib = _peak_memory_of(step, device)
            seconds = _median_seconds(step, device, repeats)
        except Exception as error:
            if not isinstance(as_failure(error), OutOfMemory):
                raise
            optimizer.zero_grad(set_to_none=True)
            return {"status": "OOM"}
        return {"status": "ok", "step_s": seconds, "views_per_s": 2 * batch / seconds, "peak_mib": peak_mib}

    return accelerator, objective, measure


def grad_cache(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    from ssl_toolkit.training.objective import grad_cached_step, plain_step

    _gradient_check(scale, report)
    _free_memory()
    _require("kornia")
    accelerator, objective, measure = _cache_steps(scale)
    chunk, batch, repeats = scale.cache_chunk, scale.cache_batch, scale.cache_repeats
    cases = {
        f"plain, batch {chunk}": measure(plain_step(accelerator, objective), chunk, repeats),
        f"grad cache, batch {batch}, chunk {chunk}": measure(
            grad_cached_step(accelerator, objective, chunk), batch, repeats
        ),
        # Last: a failed attempt can leave the allocator fragmented.
        f"plain, batch {batch}": measure(plain_step(accelerator, objective), batch, 1),
    }
    size = scale.cache_image_size
    report.details["steps"] = {
        "image_size": size,
        "precision": scale.precision,
        "peak_memory": "above the uint8 images; includes the batch's float32 views",
        **cases,
    }
    for case, result in cases.items():
        label = f"ResNet-18 {size} px, {case} ({2 * int(case.split('batch ')[1].split(',')[0]):,} views)"
        if result["status"] != "ok":
            report.add(label, result["status"])
        else:
            report.add(
                label,
                f"{result['step_s']:.2f} s/step, {result['views_per_s']:,.0f} views/s, "
                f"{_memory(result['peak_mib'])}",
            )


# --------------------------------------------------------------------------------------------------
# pretraining: the Fashion-MNIST recipe through `accelerate launch`, then its probe
# --------------------------------------------------------------------------------------------------


def _succeeded(what: str, finished: Finished) -> None:
    """Raise, naming how it ended, unless the launched command ended ok (read from its outcome file)."""
    outcome = finished.outcome
    if outcome.status is not Status.OK:
        raise RuntimeError(
            f"{what} ended {outcome.status.phrase} (exit code {finished.exit_code}): {outcome.message}"
        )


def _pretrain_and_probe(work: Path, run_dir: Path, overrides: list[str], scale: Scale) -> tuple[float, float]:
    """The recipe through `accelerate launch`, then `ssl-toolkit probe` on its run (their outcome files in
    `work`); their wall seconds."""
    environment = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launch = AccelerateLaunch(
        python=sys.executable,
        num_processes=1,
        options=("--mixed_precision", scale.precision, "--dynamo_backend", "no"),
    )
    recipe = str(REPO / "recipes" / "fashion_mnist_simclr.yaml")
    started = time.perf_counter()
    finished = launch.run(
        Command.of_module("ssl_toolkit.pretrain", [recipe, *overrides]),
        outcome=work / "pretraining.outcome.json",
        environment=environment,
        cwd=REPO,
    )
    _succeeded("the pretraining", finished)
    pretrain_wall = time.perf_counter() - started
    started = time.perf_counter()
    finished = Subprocess(python=sys.executable).run(
        Command.of_module("ssl_toolkit.cli", ["probe", str(run_dir)]),
        outcome=work / "probe.outcome.json",
        environment=environment,
        cwd=REPO,
    )
    _succeeded("the probe", finished)
    return pretrain_wall, time.perf_counter() - started


def pretraining(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    _require("kornia")
    data_root = Path(args.fashion_mnist)
    if scale.pretrain_data == "fashion_mnist" and not data_root.is_dir():
        raise Skip(
            f"Fashion-MNIST not found at {data_root}: apt-get install dataset-fashion-mnist, "
            "or pass --fashion-mnist DIR"
        )
    run_dir = Path(args.work_dir) / "runs" / "fashion_mnist_simclr"
    overrides = [
        f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        "run.overwrite=true",
        f"data.name={scale.pretrain_data}",
        *([f"data.root={data_root}"] if scale.pretrain_data == "fashion_mnist" else []),
        f"train.epochs={args.pretrain_epochs}",
        f"train.mixed_precision={scale.precision}",
        "log.trackers=[tensorboard]",
        *scale.pretrain_overrides,
    ]
    pretrain_wall, probe_wall = _pretrain_and_probe(Path(args.work_dir), run_dir, overrides, scale)
    summary = json.loads((run_dir / "pretrain.json").read_text())
    probe = json.loads((run_dir / "probe.json").read_text())
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    encoder_files = sorted(p.name for p in run_dir.glob("encoder*"))
    report.details.update(
        pretrain=summary,
        probe={k: probe.get(k) for k in ("top1", "top5", "protocol", "rankme")},
        checkpoints=checkpoints,
        encoder_files=encoder_files,
        pretrain_wall_s=pretrain_wall,
        probe_wall_s=probe_wall,
        overrides=overrides,
    )
    report.add(
        f"pretraining, {summary['steps']} steps ({summary['epochs']:.1f} epochs)",
        f"{pretrain_wall:.0f} s wall ({summary['seconds']:.0f} s training), "
        f"{summary['views_per_s']:,.0f} views/s, "
        f"peak {summary['peak_memory_mb'] / 1024:.2f} GiB ({summary['peak_memory_kind']})",
    )
    report.held(
        "checkpoint and encoder written",
        f"{checkpoints[-1:]} {encoder_files}",
        "both",
        bool(checkpoints and encoder_files),
        on_cpu=True,
    )
    report.add("linear probe (L-BFGS) on h", f"top-1 {100 * probe['top1']:.2f}%, {probe_wall:.0f} s")
