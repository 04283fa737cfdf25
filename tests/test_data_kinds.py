"""The data-kind seam: a kind defined here alone (vectors, Gaussian-noise views, an MLP encoder) pretrains
through the real loop and is evaluated by the real probe and kNN; the loop imports nothing image-specific."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pretraining_runs import logged_losses, pretrain_tiny
from torch import nn
from torch.utils.data import Dataset

from ssl_toolkit.config import load_config
from ssl_toolkit.encoder import Encoder, ProjectionHead
from ssl_toolkit.encoder_file import load_encoder
from ssl_toolkit.eval.knn import run_knn
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.kinds import DATA_KINDS, DataKind, TrainingData
from ssl_toolkit.run_dir import RunDirectory

PACKAGE = Path(__file__).resolve().parent.parent / "ssl_toolkit"
DIM, CLASSES = 8, 4


class Vectors(Dataset):
    """Points of CLASSES Gaussian clusters in DIM dimensions; items `(transform(x), class)`."""

    def __init__(self, split: str, transform=None):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(42)) * 3
        self.targets = torch.arange(400 if split == "train" else 120) % CLASSES
        self.points = centres[self.targets] + torch.randn(len(self.targets), DIM, generator=generator)
        self.classes = [f"cluster {c}" for c in range(CLASSES)]
        self.num_classes = CLASSES
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        x = self.points[index]
        return (self.transform(x) if self.transform is not None else x), int(self.targets[index])

    def with_transform(self, transform):
        view = copy.copy(self)
        view.transform = transform
        return view


class NoisyViews:
    """`count` views of a vector, each with Gaussian noise (drawn from the global, per-item seeded RNG)."""

    def __init__(self, count: int, noise: float = 0.5):
        self.count, self.noise = count, noise

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x + self.noise * torch.randn_like(x) for _ in range(self.count)]


class VectorKind(DataKind):
    name = "test_vectors"
    baseline = "raw_vectors"

    @classmethod
    def dataset_names(cls) -> list[str]:
        return ["test_clusters"]

    def load_split(self, split: str) -> Dataset:
        if split not in ("train", "test"):
            raise ValueError(f"no split {split!r}")
        return Vectors(split)

    def training_data(self, dataset: Dataset, device: torch.device) -> TrainingData:
        return TrainingData(dataset.with_transform(NoisyViews(self.config.views_per_sample)))

    def encoder_spec(self) -> dict:
        return {"input_dim": DIM, "hidden": 32, "proj_dim": self.config.model.proj_dim}

    @classmethod
    def spec_from_dict(cls, spec: dict) -> dict:
        return dict(spec)

    @classmethod
    def build_encoder(cls, spec: dict) -> nn.Module:
        backbone = nn.Sequential(nn.Linear(spec["input_dim"], spec["hidden"]), nn.ReLU())
        backbone.num_features = spec["hidden"]
        return Encoder(backbone, ProjectionHead(spec["hidden"], spec["hidden"], spec["proj_dim"]))

    def measure_preprocessing(self) -> dict:
        return {"dim": DIM}

    @classmethod
    def evaluation_transform(cls, preprocessing: dict):
        return None  # vectors go in as they are

    def evaluation_dataset(self, split: str) -> Dataset:
        return self.dataset(split)


@pytest.fixture
def vector_kind():
    DATA_KINDS[VectorKind.name] = VectorKind
    yield VectorKind
    del DATA_KINDS[VectorKind.name]


def test_a_kind_defined_in_a_test_pretrains_and_is_probed_through_the_real_loop(tmp_path, vector_kind):
    config = load_config(
        None,
        [
            "data.name=test_clusters", "model.proj_dim=8", "loss.name=supcon", "augment.n_views=3",
            "loss.temperature=0.2", "optim.name=adamw", "optim.lr=3e-3", "optim.lr_scaling=none",
            "optim.warmup_epochs=0", "train.batch_size=64", "train.epochs=4", "train.checkpoint_every=1000",
            "log.every=1", "log.knn_every=6", "log.trackers=[]", "run.name=vectors",
            f"run.output_dir={tmp_path}",
        ],
    )  # fmt: skip
    run = RunDirectory(pretrain_tiny(tmp_path, config=config))
    losses = logged_losses(run.path)
    assert len(losses) == 4 * (400 // 64) and losses[-1] < losses[0]
    assert 0.9 < run.read_metrics()[-1]["knn_top1"] <= 1.0  # the online kNN went through the kind too
    trained = load_encoder(run.encoder)
    assert trained.kind == "test_vectors" and trained.preprocessing == {"dim": DIM}
    assert trained.embed(torch.zeros(5, DIM)).shape == (5, 32)

    probe = run_probe(run.path, baselines=True)
    assert probe["num_train"] == 400 and probe["num_test"] == 120 and probe["feature_dim"] == 32
    assert probe["top1"] > 0.9 and probe["raw_vectors_top1"] > 0.9 and "random_init_top1" in probe
    assert run_knn(run.path, k=10)["top1"] > 0.9


def test_a_kind_without_its_own_subset_pretrains_on_a_stratified_fraction(vector_kind):
    config = load_config(
        None, ["data.name=test_clusters", "data.fraction=0.5", "loss.name=supcon", "augment.n_views=3"]
    )
    kind = vector_kind(config)
    dataset = kind.pretraining_dataset()
    assert len(dataset) == 200 and dataset.num_classes == CLASSES
    assert torch.bincount(dataset.targets).tolist() == [50] * CLASSES
    views, target = kind.training_data(dataset, torch.device("cpu")).dataset[7]
    assert len(views) == 3 and target == int(dataset.targets[7])
