"""The pretraining loop, on Hugging Face Accelerate: one loop for every loss and method."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ssl_toolkit import distributed
from ssl_toolkit.augment import (
    CPUViews,
    GPUViews,
    ViewParams,
    eval_transform,
    preset_views,
    resolve_device,
    view_grid,
)
from ssl_toolkit.config import Config, ConfigError, save_config, to_dict
from ssl_toolkit.data import NoReadableImagesError, create_dataset
from ssl_toolkit.data.epoch_seeded import EpochSeededDataset
from ssl_toolkit.eval.online import evenly_spaced_subset, online_knn_top1
from ssl_toolkit.eval.representation_metrics import view_pair_metrics
from ssl_toolkit.grad_cache import cached_backward
from ssl_toolkit.losses import NTXentLoss, create_loss
from ssl_toolkit.models import EncoderSpec, create_encoder, save_encoder
from ssl_toolkit.optim import create_optimizer, scale_lr, warmup_cosine_lr

CHECKPOINT_PREFIX = "step_"
CHECKPOINTS_KEPT = 2
UNREADABLE_LOG = "unreadable_images.txt"


class ContrastiveObjective(nn.Module):
    """Encoder and loss as one module, so that DDP also averages a loss's learnable parameters.

    Views are embedded in groups of equal size (multi-crop has large and small ones); views of one
    size share a forward pass, so BatchNorm sees all of them, as in SimCLR. `mode="embed"` returns the
    embeddings instead of the loss: gradient caching embeds chunks through `forward`, so that DDP sees
    a forward before each backward.
    """

    def __init__(self, encoder: nn.Module, loss: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.loss = loss

    def forward(
        self, views: list[torch.Tensor], class_labels: torch.Tensor | None = None, mode: str = "loss"
    ) -> torch.Tensor | list[torch.Tensor]:
        """Loss of the views (B, C, H, W) of B images; with `class_labels` (B,), classes are positives.

        With `mode="embed"`, the embeddings z (B, D) of each view instead.
        """
        if mode == "embed":
            return self.embed(views)
        if mode != "loss":
            raise ValueError(f"mode must be 'loss' or 'embed', got {mode!r}")
        return self.loss_of_embeddings(self.embed(views), class_labels)

    def embed(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings z (B, D) of each view (B, C, H, W), one forward per group of equal-size views."""
        embeddings: list[torch.Tensor] = []
        first = 0
        while first < len(views):
            last = first
            while last + 1 < len(views) and views[last + 1].shape == views[first].shape:
                last += 1
            _h, z = self.encoder(torch.cat(views[first : last + 1]))
            embeddings += z.chunk(last + 1 - first)
            first = last + 1
        # Kept (detached, no copy) for the logged batch statistics; with gradient caching, the last chunk's.
        self.last_embeddings = [z.detach() for z in embeddings]
        return embeddings

    def loss_of_embeddings(
        self, embeddings: list[torch.Tensor], class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of the embeddings (B, D) of each view of B images; `class_labels` (B,) as in `forward`."""
        if isinstance(self.loss, NTXentLoss):
            return self.loss(*embeddings)
        if class_labels is None:  # the views of one sample share a label, unique across processes
            batch = embeddings[0].shape[0]
            class_labels = torch.arange(batch, device=embeddings[0].device) + distributed.rank() * batch
        return self.loss(torch.cat(embeddings), class_labels.repeat(len(embeddings)))


def _grad_cached_step(
    accelerator: Accelerator,
    objective: nn.Module,
    views: list[torch.Tensor],
    class_labels: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """Forward and backward of one step by gradient caching (`train.grad_cache_chunk`); returns the loss."""
    unwrapped = accelerator.unwrap_model(objective)

    def embed(chunk: list[torch.Tensor]) -> list[torch.Tensor]:
        with accelerator.autocast():  # through the (DDP) wrapper: DDP needs a forward before each backward
            return objective(chunk, mode="embed")

    return cached_backward(
        embed,
        lambda embeddings: unwrapped.loss_of_embeddings(embeddings, class_labels),  # float32, no autocast
        views,
        chunk_size,
        loss_parameters=unwrapped.loss.parameters(),
        buffers=unwrapped.buffers(),
        backward=accelerator.backward,
        no_sync=lambda: accelerator.no_sync(objective),
    )


def _create_pretraining_loss(config: Config, num_views: int, num_classes: int) -> nn.Module:
    options = dict(config.loss.options)
    if config.loss.name == "arcface":
        if not config.loss.supervised:
            raise ConfigError("loss.name=arcface needs class labels: set loss.supervised=true")
        options.setdefault("num_classes", num_classes)
        options.setdefault("embedding_dim", config.model.proj_dim)
    if config.loss.supervised and config.loss.name == "ntxent":
        raise ConfigError(
            "loss.supervised=true needs a label-based loss such as loss.name=supcon, not ntxent"
        )
    loss = create_loss(config.loss.name, **options)
    if isinstance(loss, NTXentLoss) and num_views != 2:
        raise ConfigError(
            f"loss.name=ntxent takes exactly 2 views, the augmentation makes {num_views} "
            "(augment.n_views + augment.small_crops); use loss.name=supcon, which with one label per "
            "sample is NT-Xent over any number of views"
        )
    return loss


def common_size_transform(image_size: int) -> v2.Compose:
    """Resize and centre-crop uint8 images of any size to one size, so they batch for the GPU views.

    The side is image_size·8/7 (256 for 224), leaving the random resized crop room to act.
    """
    side = max(image_size, round(image_size * 8 / 7))
    return v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(side)])


def recipe_views(config: Config, channels: int, mean: list[float], std: list[float]) -> list[ViewParams]:
    """The views that `config.augment` asks for, as its preset resolves them for images of `channels`."""
    augment = config.augment
    return preset_views(
        augment.preset,
        image_size=config.data.image_size,
        channels=channels,
        mean=mean,
        std=std,
        n_views=augment.n_views,
        strength=augment.strength,
        min_scale=augment.min_scale,
        flip_p=augment.flip_p,
        blur_p=augment.blur_p,
        solarize_p=augment.solarize_p,
        small_crops=augment.small_crops,
        small_size=augment.small_size,
    )


def recipe_encoder_spec(config: Config, channels: int) -> EncoderSpec:
    """The encoder that `config.model` describes, for images of `channels`."""
    model = config.model
    return EncoderSpec(
        backbone=model.backbone,
        in_chans=channels,
        cifar_stem=model.cifar_stem,
        backbone_args=model.backbone_args,
        proj_hidden_dim=model.proj_hidden_dim,
        proj_dim=model.proj_dim,
    )


def _knn_sets(config: Config, mean, std) -> tuple:
    """Train (the neighbours, ≤ 10,000) and test (the queries, ≤ 2,000) splits without augmentation."""
    transform = eval_transform(config.data.image_size, mean, std)
    try:
        bank = create_dataset(config.data.name, config.data.root, "train").with_transform(transform)
        queries = create_dataset(config.data.name, config.data.root, "test").with_transform(transform)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(
            f"log.knn_every needs labelled train and test splits of {config.data.name}: {error}"
        ) from None
    return evenly_spaced_subset(bank, 10_000), evenly_spaced_subset(queries, 2_000)


def _count_unique_lines(path: Path) -> int:
    """Files listed in the unreadable-image log (each DataLoader worker reports a file once)."""
    return len(set(path.read_text().splitlines())) if path.is_file() else 0


def _log_view_grid(accelerator: Accelerator, views, mean, std, step: int) -> None:
    """A grid of the first batch's views (rows: samples, columns: views) for the dashboards."""
    trackers = [t for t in accelerator.trackers if hasattr(t, "log_images")]
    if not trackers or not accelerator.is_main_process:
        return
    grid = view_grid([v.detach().float().cpu() for v in views], mean, std)
    for tracker in trackers:
        tracker.log_images({"views": grid.unsqueeze(0)}, step=step)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss."""


class TrainingProgress:
    """The step counter and the count of skipped steps, saved and restored with Accelerate's checkpoints."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped_steps = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int) -> Path:
    """`save_state` into a temporary folder, renamed into place only once complete.

    A save killed halfway leaves a `.tmp` folder that resume ignores, so the previous checkpoint
    stays the latest usable one.
    """
    root = run_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    partial = root / f".tmp_{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in checkpoint_dirs(run_dir)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _resume_dir(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = checkpoint_dirs(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(
            f"train.resume={resume!r} is not a checkpoint folder; use auto or a path under checkpoints/"
        )
    return path


def _init_trackers(accelerator: Accelerator, config: Config, run_dir: Path) -> None:
    if not config.log.trackers:
        return
    init_kwargs = {}
    if "wandb" in config.log.trackers:
        # Offline unless the user asks otherwise, so a run never needs an account or a network.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        init_kwargs["wandb"] = {"name": config.run.name, "dir": str(run_dir)}
    # Flat `section.key` scalars: TensorBoard's hyperparameters accept nothing nested, lists or None.
    flat = {
        f"{section}.{key}" if isinstance(values, dict) else section: value
        for section, values in to_dict(config).items()
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)])
    }
    hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
    accelerator.init_trackers("ssl_toolkit", config=hyperparameters, init_kwargs=init_kwargs)


def pretrain(config: Config) -> Path:
    """Run self-supervised pretraining as configured; returns the run directory.

    Writes `config.yaml`, `metrics.jsonl`, `checkpoints/` and, at the end, `encoder.safetensors`.
    """
    if config.train.grad_cache_chunk < 0:
        raise ConfigError(
            f"train.grad_cache_chunk={config.train.grad_cache_chunk} must be 0 (off) or a number of images "
            f"per chunk, e.g. {config.train.batch_size // 4}"
        )
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        cpu=distributed.launched_on_cpu_processes(),
        mixed_precision=config.train.mixed_precision,
        # The shuffle then depends on (seed, epoch) alone, which mid-epoch resume relies on.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=list(config.log.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
    )
    set_seed(config.seed)  # before building the model, so the seed decides its initial weights

    try:
        dataset = create_dataset(
            config.data.name,
            config.data.root,
            config.data.pretrain_split,
            download=config.data.download,
            unreadable_log=run_dir / UNREADABLE_LOG,
        )
    except (ValueError, FileNotFoundError, NoReadableImagesError) as error:
        raise ConfigError(f"data.name={config.data.name!r}: {error}") from None
    mean, std = dataset.channel_stats()
    try:
        view_params = recipe_views(config, dataset.channels, mean, std)
        on_gpu = resolve_device(config.augment.device) == "gpu"
    except ValueError as error:
        raise ConfigError(f"augment: {error}") from None
    if on_gpu:  # workers only decode; views are made from whole uint8 batches on the accelerator
        item_transform = None if dataset.fixed_size else common_size_transform(config.data.image_size)
        gpu_views = GPUViews(view_params).to(accelerator.device)
    else:
        item_transform, gpu_views = CPUViews(view_params), None
    if len(dataset) < config.train.batch_size * accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} × {accelerator.num_processes} processes is larger "
            f"than the {len(dataset)} training images of {config.data.name}; lower train.batch_size"
        )
    train_items = EpochSeededDataset(dataset.with_transform(item_transform), config.seed)
    loader = DataLoader(
        train_items,
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,  # every step has the full number of negatives
        num_workers=config.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.data.num_workers > 0,
    )

    spec = recipe_encoder_spec(config, dataset.channels)
    try:
        encoder = create_encoder(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.model.sync_bn and accelerator.num_processes > 1:
        encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    encoder = encoder.to(memory_format=memory_format)
    if config.loss.supervised and dataset.targets.min() < 0:
        raise ConfigError(
            f"loss.supervised=true needs labels, but split {config.data.pretrain_split!r} of "
            f"{config.data.name} has unlabelled images; choose a labelled data.pretrain_split"
        )
    loss = _create_pretraining_loss(config, len(view_params), dataset.num_classes)
    plain_encoder = encoder  # shares the compiled one's parameters; saved and evaluated without "_orig_mod."
    if config.train.compile:  # the encoder only: the losses' loops and custom gradients gain nothing
        encoder = torch.compile(encoder)
    objective = ContrastiveObjective(encoder, loss)

    global_batch = config.train.batch_size * accelerator.num_processes
    peak_lr = scale_lr(config.optim.lr, global_batch, config.optim.lr_scaling)
    optimizer = create_optimizer(
        objective,
        config.optim.name,
        lr=peak_lr,
        weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum,
    )
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    # Augmentations draw from the global generator (also the GPU views and each worker's base seed):
    # without a per-process seed every process would crop and jitter its images identically.
    set_seed(config.seed, device_specific=True)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)

    steps_per_epoch = len(loader)
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)

    resume_from = _resume_dir(run_dir, config.train.resume)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    if accelerator.is_main_process:
        save_config(config, run_dir / "config.yaml")
    _init_trackers(accelerator, config, run_dir)
    metrics_path = run_dir / "metrics.jsonl"

    accelerator.print(
        f"pretraining {config.model.backbone} on {config.data.name}: {len(dataset)} images, "
        f"global batch {global_batch} ({accelerator.num_processes} processes), {total_steps} steps, "
        f"peak lr {peak_lr:.4g}, run directory {run_dir}"
    )
    knn_sets = _knn_sets(config, mean, std) if config.log.knn_every > 0 else None
    # A bar on an interactive terminal, on the main process only; in logs (CI, SLURM) plain lines suffice.
    progress_bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc="pretraining",
        disable=not (accelerator.is_local_main_process and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    objective.train()
    started = time.perf_counter()
    samples_since_log, last_log = 0, started
    epoch = progress.step // steps_per_epoch
    start_step = progress.step
    bad_in_a_row = 0
    while progress.step < total_steps:
        loader.set_epoch(epoch)  # a different, reproducible shuffle every epoch
        train_items.set_epoch(epoch)  # and different, reproducible views
        batches = loader
        if progress.step > epoch * steps_per_epoch:  # resumed mid-epoch
            batches = accelerator.skip_first_batches(loader, progress.step - epoch * steps_per_epoch)
        for images, targets in batches:
            lr = warmup_cosine_lr(
                progress.step, peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = gpu_views(images) if gpu_views is not None else images
            views = [view.contiguous(memory_format=memory_format) for view in views]
            grid_due = knn_sets is not None and (progress.step + 1) % config.log.knn_every == 0
            if progress.step == start_step or grid_due:  # the views, with each periodic evaluation
                _log_view_grid(accelerator, views, mean, std, progress.step)
            class_labels = targets if config.loss.supervised else None
            if config.train.grad_cache_chunk:  # forward and backward now; a skipped step drops the gradients
                loss = _grad_cached_step(
                    accelerator, objective, views, class_labels, config.train.grad_cache_chunk
                )
            else:
                with accelerator.autocast():
                    loss = objective(views, class_labels)
            # Every process must take the same decision, or the gradient all-reduce would hang; this
            # reduction is a device-host sync per step, a small price for never stepping on a NaN.
            finite_everywhere = accelerator.reduce(torch.isfinite(loss.detach()).float(), "sum").item()
            if finite_everywhere < accelerator.num_processes:
                optimizer.zero_grad(set_to_none=True)
                progress.skipped_steps += 1
                bad_in_a_row += 1
                accelerator.print(
                    f"step {progress.step}: non-finite loss, step skipped ({bad_in_a_row} in a row)"
                )
                if bad_in_a_row >= config.train.max_bad_steps:
                    last = checkpoint_dirs(run_dir)
                    last_good = last[-1] if last else "none (no checkpoint was written yet)"
                    raise TrainingDiverged(
                        f"the loss was NaN or infinite for {bad_in_a_row} steps in a row "
                        f"(train.max_bad_steps={config.train.max_bad_steps}) at step {progress.step}; "
                        f"the last good checkpoint is {last_good}. Lower optim.lr, set train.clip_grad_norm "
                        "or use train.mixed_precision=bf16 (not fp16); then resume with train.resume=auto"
                    )
                continue
            bad_in_a_row = 0
            if not config.train.grad_cache_chunk:
                accelerator.backward(loss)
            next_step = progress.step + 1
            knn_now = knn_sets is not None and (
                next_step % config.log.knn_every == 0 or next_step == total_steps
            )
            log_now = knn_now or next_step % config.log.every == 0 or next_step in (1, total_steps)
            grad_norm = None
            if config.train.clip_grad_norm is not None or log_now:
                max_norm = config.train.clip_grad_norm or float("inf")  # inf: measure without clipping
                grad_norm = accelerator.clip_grad_norm_(objective.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress_bar.update(1)
            samples_since_log += views[0].shape[0] * accelerator.num_processes

            if log_now:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                now = time.perf_counter()
                record = {
                    "step": progress.step,
                    "epoch": progress.step / steps_per_epoch,
                    "loss": mean_loss,
                    "lr": lr,
                    "samples_per_s": samples_since_log / max(now - last_log, 1e-9),
                    "grad_norm": float(grad_norm),
                    "skipped_steps": progress.skipped_steps,
                    "unreadable_images": _count_unique_lines(run_dir / UNREADABLE_LOG),
                    **view_pair_metrics(*accelerator.unwrap_model(objective).last_embeddings[:2]),
                }
                if knn_sets is not None and (
                    progress.step % config.log.knn_every == 0 or progress.step == total_steps
                ):
                    record["knn_top1"] = online_knn_top1(
                        plain_encoder.backbone,
                        *knn_sets,
                        dataset.num_classes,
                        accelerator,
                    )
                samples_since_log, last_log = 0, now
                accelerator.log(record, step=progress.step)
                if accelerator.is_main_process:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    progress_bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
                    line = f"step {progress.step}/{total_steps}  loss {mean_loss:.4f}  lr {lr:.4g}  "
                    line += f"{record['samples_per_s']:.0f} samples/s"
                    line += f"  kNN top-1 {record['knn_top1']:.4f}" if "knn_top1" in record else ""
                    progress_bar.write(line)
            if progress.step % config.train.checkpoint_every == 0 and progress.step < total_steps:
                save_checkpoint(accelerator, run_dir, progress.step)
            if progress.step >= total_steps:
                break
        epoch += 1

    save_checkpoint(accelerator, run_dir, progress.step)
    if accelerator.is_main_process:
        save_encoder(
            plain_encoder,
            spec,
            run_dir / "encoder.safetensors",
            extra={"step": progress.step, "data": {"name": config.data.name, "mean": mean, "std": std}},
        )
    progress_bar.close()
    accelerator.print(f"done in {time.perf_counter() - started:.1f}s; encoder written to {run_dir}")
    accelerator.end_training()
    return run_dir
