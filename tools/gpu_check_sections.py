"""The GPU check's sizes, its report, and the sections that measure without training: environment, losses,
augmentation (`tools/gpu_check.py` runs each in its own process; the training sections are in
`gpu_check_training.py`).

Every section takes a `Report` to add its figures to, the `Scale` of the run (the GPU's or the dry run's
tiny sizes: the same code, other numbers) and the command's arguments; it raises `Skip` when something it
needs is missing here. PyTorch is imported inside the sections only, so the parent process stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from ssl_toolkit.files import finite_or_null, replaced_atomically
from ssl_toolkit.process.memory import peak_memory_mb, reset_peak_memory
from ssl_toolkit.process.status import OutOfMemory, as_failure

SECTIONS = ("environment", "losses", "augmentation", "training_step", "grad_cache", "pretraining")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
TEMPERATURE = 0.1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
        with replaced_atomically(self.path) as partial:  # whole or not at all, whenever it is stopped
            partial.write_text(json.dumps(finite_or_null(result), indent=2, default=str, allow_nan=False))

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


def _peak_memory_of(run: Callable[[], object], device) -> float | None:
    """Run `run` once; the peak GPU memory it held above what was held before (MiB), measured by
    `ssl_toolkit.process.memory`. None on the CPU, where the process's high-water mark is no GPU figure."""
    if device.type != "cuda":
        run()
        return None
    before, _ = reset_peak_memory(device)
    run()
    _synchronize(device)
    return peak_memory_mb(device)[0] - before


def _memory(mib: float | None) -> str:
    return "– (CUDA only)" if mib is None else f"{mib / 1024:.2f} GiB"


def _free_memory() -> None:
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


LOSS_NAMES = ("floor", "ntxent", "supcon", "lightly_ntxent")
LOSS_DIM = 128


def losses(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    device = _device()
    results: dict[str, dict] = {}
    for n in scale.loss_sizes:
        for name in LOSS_NAMES:
            results[f"{name}@{n}"] = _measure_loss(name, n, scale, device)
            _free_memory()  # the case's tensors went with its frame
    report.details["cases"] = results
    report.details["dim"], report.details["temperature"] = LOSS_DIM, TEMPERATURE
    for n in scale.loss_sizes:
        for name in LOSS_NAMES:
            _report_loss(report, name, n, results)


def _measure_loss(name: str, n: int, scale: Scale, device) -> dict:
    """One loss's forward and backward over `n` embeddings: its median time and peak memory, or why
    there are none."""
    import torch
    from bench_losses import NUM_CLASSES, build_step

    if name.startswith("lightly") and _package("lightly") is None:
        return {"status": "skipped: lightly is not installed"}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, LOSS_DIM, generator=generator).to(device).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).to(device)
    step, params = build_step(name, x, labels, LOSS_DIM)

    def forward_backward() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        step().backward()

    try:
        forward_backward()  # warm-up: kernels chosen, workspaces allocated
        peak_mib = _peak_memory_of(forward_backward, device)
        seconds = _median_seconds(forward_backward, device, scale.loss_repeats)
    except Exception as error:
        if not isinstance(as_failure(error), OutOfMemory):
            raise
        return {"status": "OOM", "note": str(error).splitlines()[0][:200]}
    return {"status": "ok", "ms": seconds * 1e3, "peak_mib": peak_mib}


def _report_loss(report: Report, name: str, n: int, results: dict[str, dict]) -> None:
    """One loss's figure at `n`; NT-Xent's and SupCon's held to the floor's time (and memory, on a GPU)."""
    result, floor = results[f"{name}@{n}"], results[f"floor@{n}"]
    case = f"{name}, N = {n:,}"
    if result["status"] != "ok":
        report.add(case, result["status"])
        return
    value = f"{result['ms']:.1f} ms, {_memory(result['peak_mib'])}"
    if name not in ("ntxent", "supcon") or floor["status"] != "ok":
        report.add(case, value)
        return
    ratio = result["ms"] / floor["ms"]
    value += f"; {ratio:.2f}× floor time"
    if result["peak_mib"] is not None:
        memory_ratio = result["peak_mib"] / floor["peak_mib"]
        value += f", {memory_ratio:.2f}× floor memory"
        report.held(case, value, "≤ 1.3× floor time, ≤ 1.5× memory", ratio <= 1.3 and memory_ratio <= 1.5)
    else:
        report.held(case, value, "≤ 1.3× floor time", ratio <= 1.3)
    lightly = results.get(f"lightly_ntxent@{n}", {})
    if name == "ntxent" and lightly.get("status") == "ok":
        report.add(f"ntxent ÷ lightly, N = {n:,}", f"{result['ms'] / lightly['ms']:.2f}× time")


def augmentation(report: Report, scale: Scale, args: argparse.Namespace) -> None:
    from ssl_toolkit.kinds.images import preset_views

    _require("kornia")
    device = _device()
    workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    report.details["loader_workers"] = workers
    for size in scale.view_sizes:
        views = preset_views("simclr", image_size=size, channels=3, mean=MEAN, std=STD, n_views=2)
        side = size if size < 96 else round(size * 9 / 7)  # ImageNet-like sources above the view size
        gpu_rate = _batch_views_rate(views, side, scale, device)
        case = f"{size} px, batch {scale.view_batch}, {device.type}"
        if size >= 224:
            report.held(
                f"batch views, {case}", f"{gpu_rate:,.0f} views/s", "≥ 20,000 views/s", gpu_rate >= 20_000
            )
        else:
            report.add(f"batch views, {case}", f"{gpu_rate:,.0f} views/s")
        report.details[f"{size}px"] = {"batch_views_per_s": gpu_rate}
        loader_case = f"per-image views, {size} px, {workers} DataLoader workers"
        sources = (side, side) if size < 96 else (256, 320)
        try:
            loader_rate = _loader_views_rate(views, sources, scale, workers)
        except RuntimeError as error:  # e.g. a /dev/shm too small for the workers: the batch figure stands
            report.add(loader_case, f"failed: {str(error).splitlines()[0][:160]}")
            continue
        report.details[f"{size}px"]["loader_views_per_s"] = loader_rate
        report.add(loader_case, f"{loader_rate:,.0f} views/s; batch pipeline {gpu_rate / loader_rate:.1f}×")


def _batch_views_rate(views, side: int, scale: Scale, device) -> float:
    """Views/s of the batch pipeline (`BatchViews`) on batches of `side`-pixel images on `device`."""
    import torch
    from bench_augment import photo_like_images

    from ssl_toolkit.kinds.images import BatchViews

    batch = torch.stack(photo_like_images(scale.view_batch, (side, side), seed=1)).to(device)
    make_views = BatchViews(views).to(device)
    for _ in range(3):
        make_views(batch)
    _synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < scale.view_seconds:
        count += sum(len(v) for v in make_views(batch))
    _synchronize(device)
    return count / (time.perf_counter() - started)


def _loader_views_rate(views, source_size: tuple[int, int], scale: Scale, workers: int) -> float:
    """Views/s of the per-image pipeline (`PerImageViews`) in `workers` DataLoader workers."""
    from bench_augment import photo_like_images
    from torch.utils.data import DataLoader, Dataset

    from ssl_toolkit.kinds.images import PerImageViews

    class Views(Dataset):
        def __init__(self, images, transform):
            self.images, self.transform = images, transform

        def __len__(self) -> int:
            return 1 << 30  # drawn round-robin, as long as the clock runs

        def __getitem__(self, index: int):
            return self.transform(self.images[index % len(self.images)])

    sources = photo_like_images(64, source_size, seed=2)
    loader = DataLoader(
        Views(sources, PerImageViews(views)),
        batch_size=scale.loader_batch,
        num_workers=workers,
        persistent_workers=False,
    )
    batches = iter(loader)
    next(batches)  # workers started, first batches under way
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < scale.loader_seconds:
        count += sum(len(v) for v in next(batches))
    return count / (time.perf_counter() - started)
