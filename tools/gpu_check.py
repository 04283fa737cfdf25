"""Every GPU figure of the toolkit in one run: `make gpu-check` (≤ 8 minutes on one H100/H200).

    .venv/bin/python tools/gpu_check.py --out gpu_check                      # on a CUDA machine
    .venv/bin/python tools/gpu_check.py --out gpu_check --benchmarks BENCHMARKS.md  # and its GPU section
    .venv/bin/python tools/gpu_check.py --dry-run --out /tmp/gpu_check       # on a CPU, tiny sizes, < 2 min
    .venv/bin/python tools/gpu_check.py --sections losses grad_cache --out gpu_check_rerun
    python3 tools/gpu_check.py --bundle gpu_bundle --out gpu_check   # no internet: gpu_bundle.py made it
    .venv/bin/python tools/gpu_check.py --record gpu_check --benchmarks BENCHMARKS.md  # results run elsewhere

Sections, in this order, each in its own subprocess (so that an out-of-memory or a hang loses that section
alone, its peak memory is its own, and each builds its own Accelerator), each timed and, where a dependency
is missing, skipped with the reason:

- environment: GPU name and memory, torch / CUDA / cuDNN versions, bf16 support, package versions.
- losses: NT-Xent and SupCon forward+backward at 16,384 and 65,536 × 128 float32 embeddings — time and peak
  memory beside the floor (one logits matmul + cross-entropy) and lightly's NTXentLoss.
- augmentation: views/s of the batch pipeline (`BatchViews`, kornia, on the GPU, synchronised) at 32 and
  224 px on batches of 512, beside the per-image pipeline (`PerImageViews`) in DataLoader workers.
- training_step: the SSL step (two GPU-made views per image, encoder, NT-Xent, backward, SGD) beside the
  supervised step (one view per image, backbone + linear classifier, cross-entropy) at the same views per
  step, bf16 autocast, channels-last — ResNet-50 at 224 px and ResNet-18 with the CIFAR stem at 32 px,
  eager and with `torch.compile` of the backbone both steps share.
- grad_cache: ResNet-18 at 224 px, batch 8,192 (16,384 views) with `train.grad_cache_chunk`, beside the
  plain step at that batch and at the chunk's; and the gradient check: the cached step's parameter
  gradients equal the plain step's (float32, stochastic depth on, so the replay of the CUDA generator is
  what makes them equal; a control run without the replay must differ).
- pretraining: the Fashion-MNIST recipe through `accelerate launch` for `--pretrain-epochs` (GPU views,
  bf16, a checkpoint, the encoder file), then `ssl-toolkit probe` on it (the dry run: on digits).

Results: a Markdown table on stdout, `gpu_check.json` (every figure), `gpu_check.md` (the table) and
`gpu_check.log` (every section's output) in `--out`; `--benchmarks FILE` also writes the table into FILE's
GPU section. The exit status is 0 when no section failed, 1 otherwise, 2 for a bad argument.

`--dry-run` runs the same code on the CPU with tiny sizes: CUDA-only figures (peak GPU memory, the CUDA
generator's replay) are skipped with that reason and `torch.compile` uses its `eager` backend (the same
graph capture, no code generation), so that a GPU's first minutes are not spent on a typo.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION_RUNNER = Path(__file__).resolve()  # what each section's process runs, with --section NAME
SECTIONS = ("environment", "losses", "augmentation", "training_step", "grad_cache", "pretraining")
BENCHMARKS_BEGIN = "<!-- gpu-check results: begin -->"
BENCHMARKS_END = "<!-- gpu-check results: end -->"
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
TEMPERATURE = 0.1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIB = 2**20
MIN_SECTION_SECONDS = 5  # a section the budget gives less is not started: the check's time is spent
BUDGET_BOUND = "the check's time budget less what the later sections keep"


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of one run: the GPU's, or the dry run's tiny ones (same code, other numbers)."""

    loss_sizes: tuple[int, ...]
    loss_repeats: int
    view_sizes: tuple[int, ...]
    view_batch: int
    view_seconds: float
    loader_batch: int
    loader_seconds: float
    # (backbone, image size, CIFAR stem, images per SSL step; the supervised step gets twice as many)
    step_models: tuple[tuple[str, int, bool, int], ...]
    step_warmup: int
    step_repeats: int
    compile_backend: str
    precision: str  # Accelerate's mixed_precision for the training steps and the pretraining
    probe_args: tuple[str, ...]
    cache_image_size: int
    cache_batch: int
    cache_chunk: int
    cache_repeats: int
    check_image_size: int
    check_batch: int
    check_chunk: int
    pretrain_data: str  # the Fashion-MNIST recipe's data.name: fashion_mnist, or digits for the dry run
    pretrain_overrides: tuple[str, ...]
    # seconds each section may run before it is stopped and reported as timed out
    timeouts: dict[str, float]
    # the whole check's seconds (`--time-budget` overrides), and the seconds each section keeps for itself
    # whatever the sections before it took: a section may use the budget up to what the later ones keep
    budget: float
    reserves: dict[str, float]


GPU_SCALE = Scale(
    loss_sizes=(16_384, 65_536),
    loss_repeats=3,
    view_sizes=(32, 224),
    view_batch=512,
    view_seconds=3.0,
    loader_batch=32,  # containers often give /dev/shm only 64 MiB for the workers' tensors
    loader_seconds=6.0,
    step_models=(("resnet50", 224, False, 256), ("resnet18", 32, True, 512)),
    step_warmup=5,
    step_repeats=15,
    compile_backend="inductor",
    precision="bf16",
    probe_args=(),
    cache_image_size=224,
    cache_batch=8192,
    cache_chunk=1024,
    cache_repeats=2,
    check_image_size=64,
    check_batch=64,
    check_chunk=16,
    pretrain_data="fashion_mnist",
    # One warm-up epoch of five: a whole warm-up and cosine schedule in about two minutes.
    pretrain_overrides=("data.num_workers=8", "train.checkpoint_every=500", "optim.warmup_epochs=1"),
    timeouts={
        "environment": 60,
        "losses": 150,
        "augmentation": 120,
        "training_step": 330,
        "grad_cache": 180,
        "pretraining": 300,
    },
    budget=480,
    reserves={
        "environment": 20,
        "losses": 45,
        "augmentation": 45,
        "training_step": 120,
        "grad_cache": 60,
        "pretraining": 150,
    },
)
DRY_SCALE = Scale(
    loss_sizes=(256, 512),
    loss_repeats=1,
    view_sizes=(32, 64),
    view_batch=16,
    view_seconds=0.2,
    loader_batch=16,
    loader_seconds=0.5,
    step_models=(("resnet50", 32, False, 2), ("resnet18", 32, True, 2)),
    step_warmup=1,
    step_repeats=1,
    compile_backend="eager",
    # float32: CPUs without AVX512-BF16 emulate bf16 at a tenth of float32's speed.
    precision="no",
    probe_args=("--weight-decay", "1e-4"),  # one L-BFGS fit instead of seven
    cache_image_size=32,
    cache_batch=16,
    cache_chunk=8,
    cache_repeats=1,
    check_image_size=32,
    check_batch=8,
    check_chunk=4,
    # The recipe on scikit-learn's digits (the probe embeds 1,797 images, not 70,000), two steps, the
    # smallest timm ResNet.
    pretrain_data="digits",
    pretrain_overrides=(
        "data.num_workers=0",
        "train.max_steps=2",
        "train.batch_size=32",
        "train.checkpoint_every=1",
        "model.backbone=test_resnet",
        "model.cifar_stem=false",
    ),
    timeouts={name: 240 for name in SECTIONS},
    budget=600,
    reserves={name: 30 for name in SECTIONS},
)


class Skip(Exception):
    """A section (or part of one) that cannot run here; the message says why."""


@dataclasses.dataclass
class Figure:
    """One line of the table: what was measured, its value, the target it is held to (if any)."""

    section: str
    case: str
    value: str
    target: str = ""
    verdict: str = ""  # "met", "missed", "skipped: why", or "" when there is no target

    def row(self) -> str:
        return f"| {self.section} | {self.case} | {self.value} | {self.target} | {self.verdict} |"


class Report:
    """What a section hands back: its figures, and the raw numbers behind them. With a `path`, every
    figure is written there as it comes, so that a section stopped part-way keeps what it measured."""

    def __init__(self, section: str, dry_run: bool = False, path: Path | None = None):
        self.section, self.dry_run, self.path = section, dry_run, path
        self.figures: list[Figure] = []
        self.details: dict[str, object] = {}

    def add(self, case: str, value: str, target: str = "", verdict: str = "") -> None:
        self.figures.append(Figure(self.section, case, value, target, verdict))
        self.save("running")

    def skip(self, case: str, reason: str) -> None:
        self.add(case, "–", "", f"skipped: {reason}")

    def save(self, status: str, reason: str = "") -> None:
        if self.path is None:
            return
        result = {
            "section": self.section,
            "status": status,
            "reason": reason,
            "figures": [dataclasses.asdict(f) for f in self.figures],
            "details": self.details,
        }
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps(result, indent=2, default=str))
        partial.replace(self.path)  # whole or not at all, whenever the section is stopped

    def held(self, case: str, value: str, target: str, met: bool, *, on_cpu: bool = False) -> None:
        """A figure held to its target; a dry run's tiny CPU figures are not, unless `on_cpu` (a
        correctness check, which holds at any size)."""
        if self.dry_run and not on_cpu:
            self.add(case, value, target, "not held (dry run)")
        else:
            self.add(case, value, target, "met" if met else "missed")


# --------------------------------------------------------------------------------------------------
# Helpers shared by the sections
# --------------------------------------------------------------------------------------------------


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _require(module: str, package: str | None = None) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise Skip(f"{package or module} is not installed ({error})") from None


def _median_seconds(run: Callable[[], object], device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class PeakMemory:
    """Peak CUDA memory of what runs inside, above what was allocated before (None on the CPU)."""

    def __init__(self, device):
        self.device, self.mib = device, None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc_info) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.before) / MIB


def _memory(mib: float | None) -> str:
    return "– (CUDA only)" if mib is None else f"{mib / 1024:.2f} GiB"


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def environment(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    import torch

    report.details["python"] = platform.python_version()
    report.details["cpu_count"] = os.cpu_count()
    report.details["packages"] = {
        name: _package(name) for name in ("torch", "timm", "kornia", "accelerate", "lightly", "ssl-toolkit")
    }
    report.add("torch", torch.__version__)
    report.add(
        "packages", ", ".join(f"{k} {v or 'not installed'}" for k, v in report.details["packages"].items())
    )
    report.add("CPU cores", str(os.cpu_count()))
    if getattr(args, "bundle", None):
        site = (Path(args.bundle) / "site").resolve()
        found = importlib.metadata.distributions(path=[str(site)])
        bundled = {distribution.metadata["Name"]: distribution.version for distribution in found}
        report.details["bundle"] = {"site": str(site), "packages": bundled}
        report.add(f"from the bundle ({site})", ", ".join(f"{k} {v}" for k, v in sorted(bundled.items())))
    data = Path(args.fashion_mnist) if getattr(args, "fashion_mnist", None) else None
    if data is not None:
        found = all((data / name).is_file() for name in FASHION_MNIST_FILES)
        report.details["fashion_mnist"] = {"path": str(data), "found": found}
        report.add("Fashion-MNIST", f"{data} ({'found' if found else 'missing: the pretraining will skip'})")
    if not torch.cuda.is_available():
        report.skip("GPU, CUDA, cuDNN, bf16", "no CUDA device (dry run on the CPU)")
        return
    properties = torch.cuda.get_device_properties(0)
    gpu = {
        "name": properties.name,
        "memory_gib": properties.total_memory / 2**30,
        "capability": f"{properties.major}.{properties.minor}",
        "multiprocessors": properties.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(),
        "device_count": torch.cuda.device_count(),
    }
    report.details["gpu"] = gpu
    report.add(
        "GPU", f"{gpu['name']} ×{gpu['device_count']}, {gpu['memory_gib']:.1f} GiB, sm {gpu['capability']}"
    )
    report.add("CUDA / cuDNN", f"{gpu['cuda']} / {gpu['cudnn']}")
    report.held("bf16", "supported" if gpu["bf16"] else "not supported", "supported", bool(gpu["bf16"]))


def losses(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    import torch
    from bench_losses import NUM_CLASSES, build_step

    device = _device()
    dim = 128
    names = ["floor", "ntxent", "supcon", "lightly_ntxent"]
    results: dict[str, dict] = {}
    for n in scale.loss_sizes:
        for name in names:
            key = f"{name}@{n}"
            if name.startswith("lightly") and _package("lightly") is None:
                results[key] = {"status": "skipped: lightly is not installed"}
                continue
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(n, dim, generator=generator).to(device).requires_grad_()
            labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).to(device)
            step, params = build_step(name, x, labels, dim)

            def forward_backward(step=step, x=x, params=params) -> None:
                x.grad = None
                for p in params:
                    p.grad = None
                step().backward()

            try:
                forward_backward()  # warm-up: kernels chosen, workspaces allocated
                with PeakMemory(device) as peak:
                    forward_backward()
                seconds = _median_seconds(forward_backward, device, scale.loss_repeats)
                results[key] = {"status": "ok", "ms": seconds * 1e3, "peak_mib": peak.mib}
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                results[key] = {"status": "OOM", "note": str(error).splitlines()[0][:200]}
            del x, labels, step, params
            _free_memory()
    report.details["cases"] = results
    report.details["dim"], report.details["temperature"] = dim, TEMPERATURE

    for n in scale.loss_sizes:
        floor = results[f"floor@{n}"]
        for name in names:
            result = results[f"{name}@{n}"]
            case = f"{name}, N = {n:,}"
            if result["status"] != "ok":
                report.add(case, result["status"])
                continue
            value = f"{result['ms']:.1f} ms, {_memory(result['peak_mib'])}"
            if name in ("ntxent", "supcon") and floor["status"] == "ok":
                ratio = result["ms"] / floor["ms"]
                value += f"; {ratio:.2f}× floor time"
                if result["peak_mib"] is not None:
                    memory_ratio = result["peak_mib"] / floor["peak_mib"]
                    value += f", {memory_ratio:.2f}× floor memory"
                    report.held(
                        case, value, "≤ 1.3× floor time, ≤ 1.5× memory", ratio <= 1.3 and memory_ratio <= 1.5
                    )
                else:
                    report.held(case, value, "≤ 1.3× floor time", ratio <= 1.3)
                lightly = results.get(f"lightly_ntxent@{n}", {})
                if name == "ntxent" and lightly.get("status") == "ok":
                    report.add(f"ntxent ÷ lightly, N = {n:,}", f"{result['ms'] / lightly['ms']:.2f}× time")
            else:
                report.add(case, value)


def augmentation(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    import torch
    from bench_augment import photo_like_images
    from torch.utils.data import DataLoader, Dataset

    from ssl_toolkit.kinds.images.views import BatchViews, PerImageViews, preset_views

    _require("kornia")
    device = _device()
    workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    report.details["loader_workers"] = workers

    class Views(Dataset):
        def __init__(self, images, transform):
            self.images, self.transform = images, transform

        def __len__(self) -> int:
            return 1 << 30  # drawn round-robin, as long as the clock runs

        def __getitem__(self, index: int):
            return self.transform(self.images[index % len(self.images)])

    for size in scale.view_sizes:
        views = preset_views("simclr", image_size=size, channels=3, mean=MEAN, std=STD, n_views=2)
        side = size if size < 96 else round(size * 9 / 7)  # ImageNet-like sources above the view size
        batch = torch.stack(photo_like_images(scale.view_batch, (side, side), seed=1)).to(device)
        make_views = BatchViews(views).to(device)
        for _ in range(3):
            make_views(batch)
        _synchronize(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < scale.view_seconds:
            count += sum(len(v) for v in make_views(batch))
        _synchronize(device)
        gpu_rate = count / (time.perf_counter() - started)

        sources = photo_like_images(64, (side, side) if size < 96 else (256, 320), seed=2)
        loader = DataLoader(
            Views(sources, PerImageViews(views)),
            batch_size=scale.loader_batch,
            num_workers=workers,
            persistent_workers=False,
        )
        case = f"{size} px, batch {scale.view_batch}, {device.type}"
        if size >= 224:
            report.held(
                f"batch views, {case}", f"{gpu_rate:,.0f} views/s", "≥ 20,000 views/s", gpu_rate >= 20_000
            )
        else:
            report.add(f"batch views, {case}", f"{gpu_rate:,.0f} views/s")
        report.details[f"{size}px"] = {"batch_views_per_s": gpu_rate}
        loader_case = f"per-image views, {size} px, {workers} DataLoader workers"
        try:
            batches = iter(loader)
            next(batches)  # workers started, first batches under way
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < scale.loader_seconds:
                count += sum(len(v) for v in next(batches))
            loader_rate = count / (time.perf_counter() - started)
            del batches
        except RuntimeError as error:  # e.g. a /dev/shm too small for the workers: the batch figure stands
            report.add(loader_case, f"failed: {str(error).splitlines()[0][:160]}")
            continue
        report.details[f"{size}px"]["loader_views_per_s"] = loader_rate
        report.add(loader_case, f"{loader_rate:,.0f} views/s; batch pipeline {gpu_rate / loader_rate:.1f}×")


def _step_pair(scale: Scale, backbone: str, image_size: int, cifar_stem: bool, images: int, report: Report):
    """SSL and supervised steps of one backbone, eager then compiled; their views/s and peak memory."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from torch import nn

    from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
    from ssl_toolkit.kinds.images.views import BatchViews, preset_views
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

    name = f"{backbone}{' CIFAR stem' if cifar_stem else ''} {image_size} px"
    views_per_step = 2 * images
    results = {}
    for compiled in (False, True):
        mode = f"compiled ({scale.compile_backend})" if compiled else "eager"
        if compiled:
            # The backbone both steps share, compiled once; head, classifier and losses stay eager.
            shared = torch.compile(encoder.backbone, backend=scale.compile_backend)
            encoder.backbone = shared
            classifier[0] = shared
        row = {}
        for kind, step in (("ssl", ssl_step), ("supervised", supervised_step)):
            try:
                _synchronize(device)
                started = time.perf_counter()
                for _ in range(scale.step_warmup):
                    step()
                _synchronize(device)
                warmup_s = time.perf_counter() - started
                with PeakMemory(device) as peak:
                    step()
                seconds = _median_seconds(step, device, scale.step_repeats)
                row[kind] = {
                    "step_s": seconds,
                    "views_per_s": views_per_step / seconds,
                    "peak_mib": peak.mib,
                    "warmup_s": warmup_s,
                }
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                row[kind] = {"status": "OOM"}
            ssl_optimizer.zero_grad(set_to_none=True)
            supervised_optimizer.zero_grad(set_to_none=True)
            _free_memory()
        results[mode] = row
        if "views_per_s" not in row.get("ssl", {}) or "views_per_s" not in row.get("supervised", {}):
            report.add(f"{name}, {mode}", "OOM")
            continue
        ratio = row["ssl"]["views_per_s"] / row["supervised"]["views_per_s"]
        value = (
            f"SSL {row['ssl']['views_per_s']:,.0f} views/s ({_memory(row['ssl']['peak_mib'])}), "
            f"supervised {row['supervised']['views_per_s']:,.0f} ({_memory(row['supervised']['peak_mib'])}): "
            f"{ratio:.2f}×"
        )
        if compiled:
            value += (
                f"; warm-up incl. compilation {row['ssl']['warmup_s'] + row['supervised']['warmup_s']:.0f} s"
            )
        report.held(
            f"{name}, {views_per_step} views/step, {mode}", value, "SSL ≥ 0.85× supervised", ratio >= 0.85
        )
    report.details[name] = {"views_per_step": views_per_step, **results}


def training_step(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    _require("kornia")
    report.details["precision"] = f"mixed_precision {scale.precision}, channels-last"
    for backbone, image_size, cifar_stem, images in scale.step_models:
        _step_pair(scale, backbone, image_size, cifar_stem, images, report)
        _free_memory()


def _gradient_check(scale: Scale, report: Report) -> None:
    """The cached step's gradients against the plain step's, float32, with stochastic depth drawing from the
    generator of the views' device; and a control without the replay, which must differ."""
    import torch

    from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
    from ssl_toolkit.losses import NTXentLoss
    from ssl_toolkit.training import grad_cache
    from ssl_toolkit.training.objective import ContrastiveObjective

    device = _device()
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

    def loss_of(embeddings):
        return objective.loss_of(embeddings)

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
        loss_of([torch.cat(parts) for parts in zip(*pieces, strict=True)]).backward()
        return gradients()

    def cached() -> list[torch.Tensor]:
        fresh()
        grad_cache.cached_backward(embed, loss_of, views, chunk, buffers=objective.buffers())
        return gradients()

    def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        difference = sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b, strict=True))
        norm = sum(float(y.double().pow(2).sum()) for y in b)
        return (difference / norm) ** 0.5

    reference = plain()
    replayed = relative_difference(cached(), reference)
    replay = grad_cache._set_rng_state
    grad_cache._set_rng_state = lambda state, devices: None
    try:
        unreplayed = relative_difference(cached(), reference)
    finally:
        grad_cache._set_rng_state = replay
    generator = "CUDA" if device.type == "cuda" else "CPU"
    report.details["gradient_check"] = {
        "image_size": size,
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


def grad_cache(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    import torch
    from accelerate import Accelerator

    from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
    from ssl_toolkit.kinds.images.views import BatchViews, preset_views
    from ssl_toolkit.losses import NTXentLoss
    from ssl_toolkit.training.objective import ContrastiveObjective, grad_cached_step, plain_step

    _gradient_check(scale, report)
    _free_memory()
    _require("kornia")
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

    def run(step_of, batch: int, repeats: int) -> dict:
        train = step_of()

        def step() -> None:
            batch_views = [v.contiguous(memory_format=layout) for v in make_views(images[:batch])]
            train(batch_views, None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            step()
            with PeakMemory(device) as peak:
                step()
            seconds = _median_seconds(step, device, repeats)
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            optimizer.zero_grad(set_to_none=True)
            return {"status": "OOM"}
        return {"status": "ok", "step_s": seconds, "views_per_s": 2 * batch / seconds, "peak_mib": peak.mib}

    chunk, batch = scale.cache_chunk, scale.cache_batch
    cases = {
        f"plain, batch {chunk}": run(lambda: plain_step(accelerator, objective), chunk, scale.cache_repeats),
        f"grad cache, batch {batch}, chunk {chunk}": run(
            lambda: grad_cached_step(accelerator, objective, chunk), batch, scale.cache_repeats
        ),
        # Last: a failed attempt can leave the allocator fragmented.
        f"plain, batch {batch}": run(lambda: plain_step(accelerator, objective), batch, 1),
    }
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


def pretraining(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    _require("kornia")
    data_root = Path(args.fashion_mnist)
    if scale.pretrain_data == "fashion_mnist" and not data_root.is_dir():
        raise Skip(
            f"Fashion-MNIST not found at {data_root}: apt-get install dataset-fashion-mnist, "
            "or pass --fashion-mnist DIR"
        )
    work = Path(args.work_dir) / "runs"
    run_name = "fashion_mnist_simclr"
    overrides = [
        f"run.output_dir={work}",
        f"run.name={run_name}",
        "run.overwrite=true",
        f"data.name={scale.pretrain_data}",
        *([f"data.root={data_root}"] if scale.pretrain_data == "fashion_mnist" else []),
        f"train.epochs={args.pretrain_epochs}",
        f"train.mixed_precision={scale.precision}",
        "log.trackers=[tensorboard]",
        *scale.pretrain_overrides,
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
    ]
    launch += ["--mixed_precision", scale.precision, "--dynamo_backend", "no"]
    command = [
        *launch,
        "-m",
        "ssl_toolkit.pretrain",
        str(REPO / "recipes" / "fashion_mnist_simclr.yaml"),
        *overrides,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, cwd=REPO)
    pretrain_wall = time.perf_counter() - started
    run_dir = work / run_name
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ssl_toolkit.cli", "probe", str(run_dir)], check=True, env=environment
    )
    probe_wall = time.perf_counter() - started

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


SECTION_FUNCTIONS: dict[str, Callable[[Report, Scale, argparse.Namespace], None]] = {
    "environment": environment,
    "losses": losses,
    "augmentation": augmentation,
    "training_step": training_step,
    "grad_cache": grad_cache,
    "pretraining": pretraining,
}


# --------------------------------------------------------------------------------------------------
# Running the sections and writing the results
# --------------------------------------------------------------------------------------------------


def run_section(args: argparse.Namespace) -> int:
    """In the section's own process: run it, write its report as JSON."""
    section, scale = args.section, DRY_SCALE if args.dry_run else GPU_SCALE
    report = Report(section, dry_run=args.dry_run, path=Path(args.section_result))
    status, reason = "ok", ""
    try:
        SECTION_FUNCTIONS[section](report, scale, args)
    except Skip as skip:
        status, reason = "skipped", str(skip)
    except Exception as error:
        import traceback

        traceback.print_exc()
        status, reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]
    report.save(status, reason)
    return 0


def table(sections: list[dict]) -> list[str]:
    lines = ["| section | case | figure | target | verdict |", "|---|---|---|---|---|"]
    for result in sections:
        for figure in result["figures"]:
            lines.append(Figure(**figure).row())
        if result["status"] != "ok":
            lines.append(
                Figure(result["section"], "section", "–", "", f"{result['status']}: {result['reason']}").row()
            )
        lines.append(Figure(result["section"], "section time", f"{result['seconds']:.1f} s").row())
    return lines


def fill_benchmarks(path: Path, markdown: str) -> None:
    """Put `markdown` between the GPU section's markers in `path` (the rest of the file untouched)."""
    text = path.read_text()
    begin, end = text.find(BENCHMARKS_BEGIN), text.find(BENCHMARKS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} has no '{BENCHMARKS_BEGIN}' … '{BENCHMARKS_END}' markers to fill")
    filled = text[: begin + len(BENCHMARKS_BEGIN)] + "\n" + markdown.strip() + "\n" + text[end:]
    path.write_text(filled)


class BundleError(Exception):
    """A bundle that cannot be installed; the message names the path and the fix."""


def install_bundle(bundle: Path) -> str:
    """Install the wheels of `bundle` (tools/gpu_bundle.py's folder) into `bundle/site`, once, with this
    Python's pip and no index; returns the folder to put on the sections' PYTHONPATH."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        raise BundleError(
            f"--bundle {bundle}: no {bundle / 'wheels'}/*.whl; make it with `python tools/gpu_bundle.py "
            f"--out {bundle} --python-version X.Y` where there is internet"
        )
    site = bundle / "site"
    stamp = site / ".installed"
    listed = "\n".join(w.name for w in wheels)
    if stamp.is_file() and stamp.read_text() == listed:
        return str(site.resolve())
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    command += ["--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BundleError(
            f"--bundle {bundle}: pip could not install its wheels into {site}: {last} "
            f"(made for this Python, {platform.python_version()}? gpu_bundle.py --python-version)"
        )
    stamp.write_text(listed)
    return str(site.resolve())


def record(results: Path, benchmarks: str | None) -> int:
    """Fill `benchmarks` with the table of a finished GPU check in `results` (run on another machine)."""
    if not benchmarks:
        return bad_argument("--record needs --benchmarks FILE, the file whose GPU section it fills")
    try:
        summary = json.loads((results / "gpu_check.json").read_text())
        markdown = (results / "gpu_check.md").read_text()
    except (OSError, ValueError) as error:
        return bad_argument(
            f"--record {results}: no readable gpu_check.json and gpu_check.md there ({error})"
        )
    if summary.get("dry_run"):
        return bad_argument(f"--record {results}: a dry run's figures are not recorded")
    try:
        fill_benchmarks(Path(benchmarks), markdown)
    except (OSError, ValueError) as error:
        return bad_argument(f"--benchmarks {benchmarks}: {error}")
    print(f"{benchmarks}: GPU section filled from {results / 'gpu_check.md'}")
    return 0


def bad_argument(message: str) -> int:
    print(f"gpu_check: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.json, gpu_check.md, gpu_check.log")
    parser.add_argument(
        "--record",
        metavar="RESULTS",
        help="run nothing: write the table of a check run elsewhere (its --out folder) into --benchmarks",
    )
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--benchmarks", help="also write the table into this file's GPU section")
    parser.add_argument("--work-dir", help="the pretraining run and section files (default OUT/work)")
    parser.add_argument(
        "--fashion-mnist",
        help=f"Fashion-MNIST's folder (default: the bundle's, else {DEFAULT_FASHION_MNIST})",
    )
    parser.add_argument(
        "--bundle",
        help="a folder made by tools/gpu_bundle.py: its wheels are installed into BUNDLE/site for the "
        "sections, and its fashion-mnist/ is the default data (a machine without internet)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        help="seconds for the whole check (default 480 on a GPU, 600 dry); sections past it are not run",
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=5, help="Fashion-MNIST epochs (117 steps each)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--section-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return run_section(args)
    if args.record:
        return record(Path(args.record), args.benchmarks)
    if not args.out:
        return bad_argument("--out FOLDER is needed (or --record RESULTS --benchmarks FILE)")

    out = Path(args.out)
    if (out / "gpu_check.json").exists() and not args.overwrite:
        return bad_argument(f"{out / 'gpu_check.json'} exists: pass --overwrite or another --out")
    if args.benchmarks and not Path(args.benchmarks).is_file():
        return bad_argument(f"--benchmarks {args.benchmarks}: no such file")
    if args.benchmarks and BENCHMARKS_BEGIN not in Path(args.benchmarks).read_text():
        return bad_argument(f"--benchmarks {args.benchmarks}: no '{BENCHMARKS_BEGIN}' line to write after")
    if args.benchmarks and args.dry_run:
        return bad_argument("--benchmarks records GPU figures; a --dry-run writes only to --out")
    if args.time_budget is not None and not args.time_budget > 0:
        return bad_argument(f"--time-budget {args.time_budget:g}: must be a number of seconds > 0, e.g. 480")
    bundle_site = None
    if args.bundle:
        try:
            bundle_site = install_bundle(Path(args.bundle))
        except BundleError as error:
            return bad_argument(str(error))
        bundled_data = Path(args.bundle) / "fashion-mnist"
        if args.fashion_mnist is None and bundled_data.is_dir():
            args.fashion_mnist = str(bundled_data.resolve())
    args.fashion_mnist = args.fashion_mnist or str(DEFAULT_FASHION_MNIST)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        return bad_argument("no CUDA device: the check measures GPU figures; on a CPU use --dry-run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(args.work_dir or out / "work")
        work.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return bad_argument(f"cannot create {error.filename}: {error.strerror}")
    args.work_dir = str(work.resolve())
    scale = DRY_SCALE if args.dry_run else GPU_SCALE
    budget = args.time_budget or scale.budget

    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "tools"), bundle_site, os.environ.get("PYTHONPATH")) if p
    )
    command_line = list(argv if argv is not None else sys.argv[1:])
    # The sections are this command again with --section; a section does not install the bundle again,
    # and reads the data folder it is given last.
    passed = [*command_line, "--fashion-mnist", args.fashion_mnist]
    sections: list[dict] = []

    def write_results() -> tuple[str, list[str]]:
        """gpu_check.json and .md of the sections finished so far: a kill loses only the running one."""
        total = time.perf_counter() - started
        environment_result = next((s for s in sections if s["section"] == "environment"), {"details": {}})
        gpu = environment_result["details"].get("gpu", {}).get("name", "no GPU (dry run on the CPU)")
        header = (
            f"{gpu}; {started_at:%Y-%m-%d %H:%M} UTC; `tools/gpu_check.py {' '.join(command_line)}`; "
            f"{total / 60:.1f} min in all (target ≤ 8 min on one H100/H200)"
        )
        whole = Report("whole check", dry_run=args.dry_run)
        whole.held(
            f"{len(sections)} of {len(args.sections)} sections",
            f"{total / 60:.1f} min",
            f"≤ {budget / 60:g} min",
            total <= budget,
        )
        rows = [*table(sections), whole.figures[0].row()]
        markdown = "\n".join([header, "", *rows]) + "\n"
        failed = [s["section"] for s in sections if s["status"] in ("failed", "interrupted", "out of time")]
        summary = {
            "started": started_at.isoformat(),
            "dry_run": args.dry_run,
            "command": ["tools/gpu_check.py", *command_line],
            "time_budget": budget,
            "seconds": total,
            "failed": failed,
            "sections": sections,
        }
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "gpu_check.md").write_text(markdown)
        return markdown, failed

    # SIGTERM (a scheduler's stop) as Ctrl-C: the running section is recorded as interrupted, the rest
    # skipped, and what finished is written.
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    with open(out / "gpu_check.log", "w") as log, _restored(signal.SIGTERM, previous_handler):
        for index, section in enumerate(args.sections):
            if interrupted:
                sections.append(_unrun(section, "skipped", "the check was interrupted before it"))
                continue
            seconds_left = budget - (time.perf_counter() - started)
            timeout, why = section_time(section, args.sections[index + 1 :], scale, seconds_left)
            section_started = time.perf_counter()
            if why == BUDGET_BOUND and timeout < MIN_SECTION_SECONDS:
                reason = f"{budget:g} s budget spent before it (--time-budget to widen)"
                result = _unrun(section, "out of time", reason)
            else:
                print(f"[gpu_check] {section} … (at most {round(timeout, 2):g} s)", flush=True)
                try:
                    result = _run_in_subprocess(section, args, passed, log, environment, timeout, why)
                except KeyboardInterrupt:
                    interrupted = True
                    result = _unrun(section, "interrupted", "stopped by a signal")
            result["seconds"] = time.perf_counter() - section_started
            sections.append(result)
            write_results()
            print(
                f"[gpu_check] {section}: {result['status']} in {result['seconds']:.1f} s {result['reason']}",
                flush=True,
            )
    markdown, failed = write_results()
    print()
    print(markdown)
    if interrupted:
        return 130
    if args.benchmarks:
        fill_benchmarks(Path(args.benchmarks), markdown)
    return 1 if failed else 0


@contextlib.contextmanager
def _restored(signum: int, handler):
    try:
        yield
    finally:
        signal.signal(signum, handler)


def _unrun(section: str, status: str, reason: str) -> dict:
    return {"section": section, "status": status, "reason": reason, "figures": [], "details": {}}


def _run_in_subprocess(section, args, passed, log, environment: dict, timeout: float, why: str) -> dict:
    """One section in its own process, its output appended to the log; its result, or why there is none.
    A section stopped part-way (its time, a crash) keeps the figures it had written."""
    result_file = Path(args.work_dir) / f"section_{section}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(SECTION_RUNNER), *passed, "--section", section]
    command += ["--section-result", str(result_file), "--work-dir", args.work_dir]
    log.write(f"\n===== {section} =====\n")
    log.flush()
    # A session of its own, so that a timeout or a signal stops the section's children (DataLoader
    # workers, accelerate launch's training process) with it.
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO, start_new_session=True
    )

    try:
        process.wait(timeout=timeout)
        stop = f"its process exited {process.returncode} part-way (see gpu_check.log)"
    except subprocess.TimeoutExpired:
        _stop_group(process)
        stop = f"timed out after {round(timeout, 2):g} s ({why}; see gpu_check.log)"
    except KeyboardInterrupt:
        _stop_group(process)
        raise
    result = json.loads(result_file.read_text()) if result_file.exists() else _unrun(section, "running", "")
    if result["status"] != "running":
        return result
    kept = f"; its {len(result['figures'])} figures before it kept" if result["figures"] else ""
    return {**result, "status": "failed", "reason": stop + kept}


def section_time(section: str, later: list[str], scale: Scale, seconds_left: float) -> tuple[float, str]:
    """The seconds `section` may run, and what bounds them: its own timeout, or the check's budget less
    what the `later` sections keep for themselves."""
    own = scale.timeouts[section]
    allowed = seconds_left - sum(scale.reserves[s] for s in later)
    if own <= allowed:
        return own, "the section's limit"
    return max(allowed, 0.0), BUDGET_BOUND


def _stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
