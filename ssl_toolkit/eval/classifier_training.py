"""Training a classifier on augmented labelled samples over a run's backbone: what the SGD linear probe
(backbone frozen, `sgd_probe`) and fine-tuning (backbone trained too, `finetune`) share.

Both follow SimCLR's evaluation (Chen et al. 2020, appendix B.5 and B.6), as solo-learn and lightly report
theirs: random resized crops and horizontal flips of the training images, SGD with Nesterov momentum 0.9,
a learning rate scaled by batch / 256 and a cosine schedule per step, top-1 on the unaugmented test split.
The linear probe standardises the frozen h with a BatchNorm without affine parameters before its linear
layer (as MoCo v3 and MAE do), so one learning rate suits features of any scale. Under `accelerate launch`
every process trains on its share of each batch (DDP averages the gradients) and embeds its share of the
test split.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Subset

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.metrics import classification_report
from ssl_toolkit.eval.run import EvaluationRun


@dataclass(frozen=True)
class ClassifierSchedule:
    """How a classifier is trained.

    Attributes:
        epochs: passes over the labelled training images.
        batch_size: images per step on each process.
        lr: learning rate at a global batch of 256 (scaled linearly with the global batch).
        weight_decay: SGD's L2 penalty.
        momentum: Nesterov momentum.
        min_scale: the smallest crop area, as a fraction of the image (SimCLR: 0.08).
        num_workers: DataLoader workers that decode and crop.
    """

    epochs: int
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    min_scale: float = 0.08
    num_workers: int = 0

    def check(self, option_prefix: str = "--") -> None:
        """Raise ConfigError naming the option whose value cannot be used."""
        problems = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch-size", self.batch_size >= 1, "at least 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "more than 0"),
            ("weight-decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "0 or more"),
            ("min-scale", 0 < self.min_scale <= 1, "in (0, 1]"),
            ("num-workers", self.num_workers >= 0, "0 or more"),
        ]
        for name, ok, expected in problems:
            if not ok:
                value = getattr(self, name.replace("-", "_"))
                raise ConfigError(f"{option_prefix}{name} {value} must be {expected}")


class LinearHead(nn.Sequential):
    """BatchNorm without affine parameters, then a linear layer at zero: (N, F) → logits (N, C)."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes))
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)


class FineTuned(nn.Module):
    """The backbone and a linear layer on its features: images → logits (N, C)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def labelled_train_indices(run: EvaluationRun, label_fraction: float = 1.0) -> torch.Tensor:
    """The labelled train items, or a seeded, class-stratified share of them with at least one per class."""
    from ssl_toolkit.kinds.fraction import stratified_indices

    targets = torch.as_tensor(run.train_set.targets)
    labelled = torch.nonzero(targets >= 0).flatten()
    if len(labelled) == 0:
        raise ConfigError(
            f"the train split of data.name={run.config.data.name!r} has no labels; point data.root at "
            "a labelled dataset"
        )
    if label_fraction >= 1:
        return labelled
    return labelled[stratified_indices(targets[labelled], label_fraction, run.config.seed)]


def train_classifier(
    run: EvaluationRun,
    train_indices: torch.Tensor,
    schedule: ClassifierSchedule,
    *,
    fine_tune: bool,
    seed: int,
    command: str,
) -> dict | None:
    """Train a classifier on the augmented train items `train_indices` and score it on the test split.

    `fine_tune`: the backbone is trained with the linear layer (BatchNorm in training mode); otherwise it
    stays frozen in eval mode and only the standardised linear head learns. The run's encoder itself is
    left untouched (a copy is trained). Returns, on the main process, `classification_report`'s figures on
    the test split with the schedule, the number of training images, the last epoch's mean loss and the
    seconds taken; None on the others.

    Raises:
        ConfigError: the data kind has no augmented training samples (`command` names what asked for
            them), or the loss became NaN or infinite (lower the learning rate).
    """
    started = time.perf_counter()
    accelerator, kind = run.accelerator, run.kind
    set_seed(seed, device_specific=True)  # the crops of each process differ, and repeat with the seed
    augmented = kind.classifier_training_dataset("train", schedule.min_scale)
    if augmented is None:
        raise ConfigError(
            f"{command} trains on augmented samples, which a {kind.name} encoder has none of "
            f"({run.directory.path}): use `ssl-toolkit probe` (the L-BFGS probe on its frozen features)"
        )
    images = Subset(augmented, train_indices.tolist())
    loader = DataLoader(
        images,
        batch_size=schedule.batch_size,
        shuffle=True,
        # A last batch of one image would stop BatchNorm in training mode; a fresh shuffle each epoch
        # leaves out other images each time.
        drop_last=len(images) > schedule.batch_size,
        num_workers=schedule.num_workers,
        persistent_workers=schedule.num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    backbone = kind.place_encoder(copy.deepcopy(run.encoder)).backbone
    feature_dim, num_classes = run.trained.feature_dim, run.num_classes
    if fine_tune:
        model = FineTuned(backbone, feature_dim, num_classes)
        frozen = None
    else:
        model = LinearHead(feature_dim, num_classes)
        frozen = backbone.to(accelerator.device).eval().requires_grad_(False)
    global_batch = schedule.batch_size * accelerator.num_processes
    peak_lr = schedule.lr * global_batch / 256
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=peak_lr,
        momentum=schedule.momentum,
        nesterov=True,
        weight_decay=schedule.weight_decay,
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total_steps, step = schedule.epochs * len(loader), 0
    epoch_loss = torch.zeros((), device=accelerator.device)
    for epoch in range(schedule.epochs):
        model.train()
        epoch_loss.zero_()
        for inputs, targets in loader:
            for group in optimizer.param_groups:  # cosine to 0, per step
                group["lr"] = peak_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            inputs = kind.prepare_batch([inputs])[0]
            with accelerator.autocast():
                if frozen is None:
                    logits = model(inputs)
                else:
                    with torch.no_grad():
                        features = frozen(inputs)
                    logits = model(features.float())
            loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            epoch_loss += loss.detach()
            step += 1
        # One check per epoch, not per step: reading the loss waits for the accelerator.
        mean_loss = accelerator.reduce(epoch_loss, reduction="mean").item() / len(loader)
        if not math.isfinite(mean_loss):
            raise ConfigError(
                f"the classifier's loss is {mean_loss} in epoch {epoch + 1}; lower --lr (now {schedule.lr})"
            )
    model.eval()
    unwrapped = accelerator.unwrap_model(model)

    def logits_of(inputs: torch.Tensor) -> torch.Tensor:
        inputs = kind.prepare_batch([inputs])[0]
        return unwrapped(inputs) if frozen is None else unwrapped(frozen(inputs).float())

    logits, targets = extract_features(
        logits_of,
        run.test_set,
        accelerator,
        batch_size=run.batch_size,
        collate_fn=kind.evaluation_collate,
    )
    if not accelerator.is_main_process:
        return None
    report = classification_report(logits, targets, num_classes)
    report.update(
        num_train=len(train_indices),
        num_test=len(targets),
        feature_dim=feature_dim,
        final_train_loss=mean_loss,
        schedule=asdict(schedule),
        global_batch=global_batch,
        peak_lr=peak_lr,
        processes=accelerator.num_processes,
        seconds=time.perf_counter() - started,
    )
    return report
