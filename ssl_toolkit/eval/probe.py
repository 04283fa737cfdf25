"""`ssl-toolkit probe RUN_DIR`: linear probe on the frozen encoder of a pretraining run → probe.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from ssl_toolkit import distributed
from ssl_toolkit.augment import eval_transform
from ssl_toolkit.config import Config, ConfigError, load_config
from ssl_toolkit.data import ImageDataset, NoReadableImagesError, create_dataset
from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.linear_probe import train_linear_probe
from ssl_toolkit.eval.metrics import classification_report
from ssl_toolkit.models import Encoder, create_encoder, load_encoder

FEATURES = ("backbone", "projection")


def load_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's own config.yaml, with `section.key=value` overrides (e.g. data.root=...)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml; pass the run directory that pretraining wrote")
    return load_config(path, overrides)


def _datasets(config: Config, mean: list[float], std: list[float]) -> tuple[ImageDataset, ImageDataset]:
    transform = eval_transform(config.data.image_size, mean, std)
    try:
        train = create_dataset(config.data.name, config.data.root, "train", download=config.data.download)
        # imagefolder decides channels per split from its first image; the encoder expects train's.
        options = {"channels": train.channels} if config.data.name == "imagefolder" else {}
        test = create_dataset(config.data.name, config.data.root, "test", **options)
        return train.with_transform(transform), test.with_transform(transform)
    except (ValueError, FileNotFoundError, NoReadableImagesError) as error:
        raise ConfigError(f"data.name={config.data.name!r}: {error}") from None


def _embedder(encoder: Encoder, features: str):
    encoder.eval()  # frozen: BatchNorm uses its running statistics, nothing is updated
    if features == "backbone":
        return encoder.backbone
    return lambda images: encoder(images)[1]


def _probe_features(train, test, num_classes: int, seed: int) -> dict:
    (train_x, train_y), (test_x, test_y) = train, test
    classifier, search = train_linear_probe(train_x, train_y, num_classes, seed=seed)
    report = classification_report(classifier.scores(test_x), test_y, num_classes)
    report.update(num_train=len(train_y), num_test=len(test_y), feature_dim=train_x.shape[1], **search)
    return report


def run_probe(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    baselines: bool = False,
    batch_size: int = 256,
) -> dict:
    """Probe the run's frozen encoder on its dataset; writes and returns the contents of probe.json."""
    if features not in FEATURES:
        raise ConfigError(f"--features {features!r} is not one of: {', '.join(FEATURES)}")
    run_dir = Path(run_dir)
    config = load_run(run_dir, overrides)
    try:
        encoder, spec, extra = load_encoder(run_dir / "encoder.safetensors")
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    accelerator = Accelerator(
        cpu=distributed.launched_on_cpu_processes(), mixed_precision=config.train.mixed_precision
    )
    data_stats = extra["data"]
    train_set, test_set = _datasets(config, data_stats["mean"], data_stats["std"])
    num_classes = train_set.num_classes
    started = time.perf_counter()

    def probe_model(model: Encoder) -> dict:
        model = accelerator.prepare_model(model, evaluation_mode=True)
        embed = _embedder(accelerator.unwrap_model(model), features)
        train = extract_features(embed, train_set, accelerator, batch_size=batch_size)
        test = extract_features(embed, test_set, accelerator, batch_size=batch_size)
        return _probe_features(train, test, num_classes, config.seed)

    result = probe_model(encoder)
    result["features"] = features
    if baselines:
        torch.manual_seed(config.seed)
        result["random_init_top1"] = probe_model(create_encoder(spec))["top1"]
        flatten = lambda dataset: extract_features(  # noqa: E731
            lambda images: images.flatten(1), dataset, accelerator, batch_size=batch_size
        )
        result["raw_pixels_top1"] = _probe_features(
            flatten(train_set), flatten(test_set), num_classes, config.seed
        )["top1"]
    result["seconds"] = time.perf_counter() - started
    if accelerator.is_main_process:
        (run_dir / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
