"""Config → objects, in one place: what pretraining, evaluation and the tools build from a config.

Every rule that needs only the config was checked by `load_config`; the rules here need the data too (the
dataset's size and labels). Each builder raises ConfigError naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_toolkit import distributed
from ssl_toolkit.config import Config, ConfigError
from ssl_toolkit.kinds import DataKind, TrainingData
from ssl_toolkit.losses import create_loss, loss_class
from ssl_toolkit.optim import LrSchedule, create_optimizer, scale_lr
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.epoch_seeded import EpochSeededDataset
from ssl_toolkit.training.online_knn import OnlineKNN
from ssl_toolkit.training.online_probe import OnlineLinearProbe
from ssl_toolkit.training.stop_signals import ignore_stop_signals

KNN_BANK_SIZE = 10_000  # train items the online kNN's neighbours come from
KNN_QUERIES = 2_000  # test items it classifies


def accelerator(config: Config, run: RunDirectory) -> Accelerator:
    """The pretraining Accelerator: the config's precision and trackers, files under the run directory."""
    return Accelerator(
        cpu=distributed.launched_on_cpu_processes(),
        mixed_precision=config.train.mixed_precision,
        # The shuffle then depends on (seed, epoch) alone, which mid-epoch resume relies on.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=list(config.log.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run.path), logging_dir=str(run.path)),
        # A collective that waits longer than this raises, instead of hanging on a stalled or dead peer.
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=config.train.collective_timeout_s))
        ],
    )


def cpu_bf16_warning(mixed_precision: str, device: torch.device) -> str | None:
    """A line for bf16 autocast on a CPU that emulates bf16 (neither AVX512-BF16 nor AMX), where it runs
    several times slower than float32 (8× on a 2-core AMD EPYC without AVX512); None elsewhere."""
    if mixed_precision != "bf16" or device.type != "cpu":
        return None
    # torch.cpu's capability checks are private: without them, say nothing rather than guess.
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is None or avx512_bf16() or (amx is not None and amx()):
        return None
    return (
        "warning: train.mixed_precision=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated here, "
        "often several times slower than float32; train.mixed_precision=no trains faster on this machine"
    )


def train_loader(
    config: Config, data: TrainingData, num_processes: int
) -> tuple[DataLoader, EpochSeededDataset]:
    """The shuffled DataLoader of full batches, and its items seeded per (seed, epoch, index)."""
    dataset = data.dataset
    if len(dataset) < config.train.batch_size * num_processes:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} × {num_processes} processes is larger than the "
            f"{len(dataset)} training samples of {config.data.name}; lower train.batch_size"
        )
    items = EpochSeededDataset(dataset, config.seed)
    loader = DataLoader(
        items,
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,  # every step has the full number of negatives
        num_workers=config.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.data.num_workers > 0,
        worker_init_fn=ignore_stop_signals,
        collate_fn=data.collate,
    )
    return loader, items


def encoders(
    config: Config, kind: DataKind, num_processes: int, device: torch.device | None = None
) -> tuple[nn.Module, nn.Module]:
    """The encoder to save and evaluate, and the one to train (the same, or its compiled form).

    Both share their parameters; the compiled one's state dict would name them `_orig_mod.*`.
    """
    if config.model.sync_bn and num_processes > 1 and device is not None and device.type != "cuda":
        # DDP refuses SyncBatchNorm off the GPU with a long traceback; say so before building.
        raise ConfigError(
            f"model.sync_bn=true needs CUDA processes (torch's SyncBatchNorm runs on GPUs only), but these "
            f"{num_processes} processes run on {device.type}; set model.sync_bn=false"
        )
    encoder = kind.create_encoder()
    if config.model.sync_bn and num_processes > 1:
        encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
    # The encoder only: the losses' loops and custom gradients gain nothing from compiling.
    return encoder, torch.compile(encoder) if config.train.compile else encoder


def loss(config: Config, dataset: Dataset) -> nn.Module:
    """The loss `config.loss` names, with what it needs from the data (a loss with class weights, such as
    ArcFace or cross-entropy: the number of classes and the embedding dimension)."""
    options = dict(config.loss.options)
    if config.loss.supervised and dataset.targets.min() < 0:
        raise ConfigError(
            f"loss.supervised=true needs labels, but split {config.data.pretrain_split!r} of "
            f"{config.data.name} has unlabelled samples; choose a labelled data.pretrain_split"
        )
    try:
        if getattr(loss_class(config.loss.name), "needs_class_labels", False):
            # Its weights have one row per class, each as wide as the projection output it receives.
            options.setdefault("num_classes", dataset.num_classes)
            options.setdefault("embedding_dim", config.model.proj_dim)
        return create_loss(config.loss.name, **options)
    except ValueError as error:
        raise ConfigError(f"loss.name={config.loss.name}: {error}") from None


def optimizer(config: Config, model: nn.Module, num_processes: int) -> tuple[torch.optim.Optimizer, float]:
    """The optimiser of `model` at the peak learning rate the global batch scales `optim.lr` to."""
    optim = config.optim
    peak_lr = scale_lr(optim.lr, config.train.batch_size * num_processes, optim.lr_scaling)
    built = create_optimizer(
        model, optim.name, lr=peak_lr, weight_decay=optim.weight_decay, momentum=optim.momentum
    )
    return built, peak_lr


def lr_schedule(config: Config, steps_per_epoch: int, peak_lr: float) -> LrSchedule:
    """Warmup over `optim.warmup_epochs`, then cosine to 0 at `train.epochs` (or `train.max_steps`)."""
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)
    return LrSchedule(peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps)


def online_probe(
    config: Config, dataset: Dataset, accelerator: Accelerator, feature_dim: int
) -> OnlineLinearProbe | None:
    """The online linear probe of `log.online_probe`, when the pretraining samples have labels."""
    if not config.log.online_probe or not (torch.as_tensor(dataset.targets) >= 0).any():
        return None
    return OnlineLinearProbe(feature_dim, dataset.num_classes, accelerator, lr=config.log.online_probe_lr)


def online_evaluation(
    config: Config,
    kind: DataKind,
    accelerator: Accelerator,
    backbone: nn.Module,
    probe: OnlineLinearProbe | None = None,
) -> Callable[[], dict] | None:
    """The periodic evaluation of `log.knn_every`: kNN top-1 of the backbone on the test split, and the
    online probe's top-1 on the same test items."""
    if config.log.knn_every <= 0:
        return None
    try:
        bank, queries = kind.evaluation_dataset("train"), kind.evaluation_dataset("test")
    except ConfigError as error:
        raise ConfigError(f"log.knn_every needs labelled train and test splits: {error}") from None
    return OnlineKNN(
        backbone,
        bank,
        queries,
        accelerator,
        bank_size=KNN_BANK_SIZE,
        query_count=KNN_QUERIES,
        collate_fn=kind.evaluation_collate,
        probe=probe,
    )
