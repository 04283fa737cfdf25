"""Images: the registered image datasets, SimCLR views, timm backbones, channels-last batches, view grids."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ssl_toolkit.config import ConfigError
from ssl_toolkit.kinds.base import DataKind, TrainingData, register_data_kind
from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
from ssl_toolkit.kinds.images.datasets import DATASETS, ImageDataset, NoReadableImagesError, create_dataset
from ssl_toolkit.kinds.images.datasets.subset import ImageSubset
from ssl_toolkit.kinds.images.views import (
    BatchViews,
    PerImageViews,
    ViewParams,
    common_size_transform,
    eval_transform,
    preset_views,
    resolve_device,
    view_grid,
)

RAW_PIXELS_MAX_SIDE = 32  # larger images are area-averaged to 32 px, or ImageNet would give 150k-D "features"


@register_data_kind
class ImageKind(DataKind):
    """Images as uint8 (C, H, W) tensors; `preprocessing()` is their size, channels, mean and std."""

    name = "image"
    baseline = "raw_pixels"
    load_errors = (*DataKind.load_errors, NoReadableImagesError)

    @classmethod
    def dataset_names(cls) -> list[str]:
        return list(DATASETS)

    def load_split(self, split: str) -> ImageDataset:
        data = self.config.data
        options = {}
        takes_channels = "channels" in DATASETS[data.name].options()
        if data.channels is not None and not takes_channels:
            raise ConfigError(
                f"data.channels={data.channels}: only imagefolder takes it, {data.name} has its own; "
                "remove data.channels (or set it to null)"
            )
        if takes_channels:
            # The encoder's channels when it has been trained (evaluation), else data.channels; None lets
            # the dataset decide from all its splits, so every split and evaluation agree.
            stored = (self._preprocessing or {}).get("channels")
            options["channels"] = stored if stored is not None else data.channels
        pretraining = self.run is not None and split == data.pretrain_split
        return create_dataset(
            data.name,
            data.root,
            split,
            download=data.download,
            unreadable_log=self.run.unreadable_inputs if pretraining else None,
            **options,
        )

    def preprocessing(self) -> dict:
        # The stored statistics at the size the config asks for (evaluation may override data.image_size).
        return {**super().preprocessing(), "image_size": self.config.data.image_size}

    def measure_preprocessing(self) -> dict:
        # The whole split even with data.fraction: a dataset's normalisation is then the same in every
        # run, and runs on different fractions differ only in the samples they train on.
        dataset = self.pretraining_split()
        mean, std = dataset.channel_stats()
        return {
            "image_size": self.config.data.image_size,
            "channels": dataset.channels,
            "mean": mean,
            "std": std,
        }

    # -- pretraining --------------------------------------------------------------------------------------
    def subset(self, dataset: ImageDataset, indices: torch.Tensor) -> ImageSubset:
        return ImageSubset(dataset, indices)

    def view_params(self) -> list[ViewParams]:
        """The views that `config.augment` asks for, as its preset resolves them for these images."""
        augment, stats = self.config.augment, self.preprocessing()
        if augment.split_count is not None:
            raise ConfigError("augment.split_count is for event sequences; images take augment.n_views")
        try:
            return preset_views(
                augment.preset,
                image_size=self.config.data.image_size,
                channels=stats["channels"],
                mean=stats["mean"],
                std=stats["std"],
                n_views=augment.n_views,
                strength=augment.strength,
                min_scale=augment.min_scale,
                flip_p=augment.flip_p,
                blur_p=augment.blur_p,
                solarize_p=augment.solarize_p,
                small_crops=augment.small_crops,
                small_size=augment.small_size,
            )
        except ValueError as error:
            raise ConfigError(f"augment: {error}") from None

    def training_data(self, dataset: ImageDataset, device: torch.device) -> TrainingData:
        views = self.view_params()
        if resolve_device(self.config.augment.device) == "gpu":
            # Workers only decode; views are made from whole uint8 batches on the accelerator.
            resize = None if dataset.fixed_size else common_size_transform(self.config.data.image_size)
            return TrainingData(dataset.with_transform(resize), BatchViews(views).to(device))
        return TrainingData(dataset.with_transform(PerImageViews(views)))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.train.channels_last else torch.contiguous_format

    def prepare_batch(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [view.contiguous(memory_format=self.memory_format) for view in views]

    def view_summary(self, views: list[torch.Tensor]) -> torch.Tensor:
        stats = self.preprocessing()
        return view_grid([view.detach().float().cpu() for view in views], stats["mean"], stats["std"])

    # -- the encoder --------------------------------------------------------------------------------------
    def encoder_spec(self) -> EncoderSpec:
        model = self.config.model
        return EncoderSpec(
            backbone=model.backbone,
            in_chans=self.preprocessing()["channels"],
            cifar_stem=model.cifar_stem,
            backbone_args=model.backbone_args,
            proj_hidden_dim=model.proj_hidden_dim,
            proj_dim=model.proj_dim,
        )

    @classmethod
    def spec_from_dict(cls, spec: dict) -> EncoderSpec:
        return EncoderSpec(**spec)

    @classmethod
    def build_encoder(cls, spec: EncoderSpec | dict) -> nn.Module:
        return create_encoder(spec if isinstance(spec, EncoderSpec) else cls.spec_from_dict(spec))

    def place_encoder(self, encoder: nn.Module) -> nn.Module:
        return encoder.to(memory_format=self.memory_format)

    # -- evaluation ---------------------------------------------------------------------------------------
    @classmethod
    def evaluation_transform(cls, preprocessing: dict) -> Callable:
        return eval_transform(preprocessing["image_size"], preprocessing["mean"], preprocessing["std"])

    def evaluation_dataset(self, split: str) -> Dataset:
        # Items carry whether their image was readable: evaluation drops the others instead of reusing
        # a neighbour, which would count one sample and its label twice.
        return self.dataset(split).evaluation_items(self.evaluation_transform(self.preprocessing()))

    def classifier_training_dataset(self, split: str, min_scale: float) -> ImageDataset:
        stats = self.preprocessing()
        return self.dataset(split).with_transform(
            CropAndFlip(stats["image_size"], stats["mean"], stats["std"], min_scale)
        )

    def baseline_features(self, inputs: torch.Tensor) -> torch.Tensor:
        if max(inputs.shape[-2:]) > RAW_PIXELS_MAX_SIDE:
            inputs = F.adaptive_avg_pool2d(inputs, RAW_PIXELS_MAX_SIDE)
        return inputs.flatten(1)

    def cache_key(self) -> dict:
        return {**super().cache_key(), "image_size": self.config.data.image_size}


class CropAndFlip:
    """The training transform of linear evaluation and fine-tuning: uint8 (C, H, W) → float (C, size, size),
    a random resized crop and a horizontal flip with p = 0.5, then normalised. Picklable, for DataLoader
    workers."""

    def __init__(self, size: int, mean: list[float], std: list[float], min_scale: float = 0.08):
        view = ViewParams(
            size=size,
            scale=(min_scale, 1.0),
            flip_p=0.5,
            jitter_strength=0.0,
            jitter_p=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
            solarize_p=0.0,
            mean=tuple(mean),
            std=tuple(std),
        )
        self.views = PerImageViews([view])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.views(image)[0]
