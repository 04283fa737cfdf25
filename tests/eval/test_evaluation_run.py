"""Opening a finished run for evaluation: frozen encoder, feature cache, W&B summary."""

from __future__ import annotations

import hashlib

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

import ssl_toolkit.eval.run as evaluation_run
from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import load_encoder
from ssl_toolkit.eval.features import FeatureCache, extract_features
from ssl_toolkit.eval.run import EvaluationRun, frozen_embedding
from ssl_toolkit.kinds.images.datasets import create_dataset
from ssl_toolkit.kinds.images.views import eval_transform
from ssl_toolkit.run_dir import RunDirectory


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(module):
    return {name: value.clone() for name, value in module.state_dict().items()}


def test_feature_extraction_leaves_the_encoder_bit_identical(tiny_run):
    trained = load_encoder(RunDirectory(tiny_run).encoder)
    encoder, stats = trained.encoder, trained.preprocessing
    digits = create_dataset("digits", None, "test").with_transform(
        eval_transform(8, stats["mean"], stats["std"])
    )
    before = _state(encoder)
    # A forward pass in training mode would move BatchNorm's running statistics: the check below can fail.
    encoder.train()(torch.randn(16, 1, 8, 8))
    assert any(not torch.equal(before[name], value) for name, value in encoder.state_dict().items())
    encoder.load_state_dict(before)
    encoder.train()  # evaluation must freeze it whatever mode it comes in
    for kind in ("backbone", "projection"):
        extract_features(frozen_embedding(encoder, kind), digits, Accelerator(cpu=True), batch_size=64)
    after = encoder.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert all(p.grad is None for p in encoder.parameters())


def test_evaluation_keeps_the_encoder_equal_to_its_file(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("features"))
    run = EvaluationRun(run_dir)
    run.encoder.train()  # as a caller might leave it
    for kind in ("backbone", "projection"):
        run.features(kind, "train")
    saved = load_file(str(RunDirectory(run_dir).encoder))
    state = run.encoder.state_dict()
    assert saved.keys() == state.keys()
    for name, value in saved.items():
        assert torch.equal(value, state[name].cpu()), name


def test_probe_and_knn_leave_the_encoder_file_unchanged(tiny_run):
    from ssl_toolkit.eval.knn import run_knn
    from ssl_toolkit.eval.probe import run_probe

    before = _digest(RunDirectory(tiny_run).encoder)
    run_probe(tiny_run, features="both", weight_decay=1e-4)
    run_knn(tiny_run)
    assert _digest(RunDirectory(tiny_run).encoder) == before


def test_cache_round_trip_and_key_mismatch(tmp_path):
    cache = FeatureCache(tmp_path / "features")
    features, targets = torch.randn(5, 3), torch.arange(5)
    key = {"encoder_sha256": "abc", "data": {"name": "digits", "size": (8, 8)}}
    assert cache.load("backbone_train", key) is None
    cache.save("backbone_train", key, features, targets)
    loaded = cache.load(
        "backbone_train", {"data": {"size": [8, 8], "name": "digits"}, "encoder_sha256": "abc"}
    )
    assert loaded is not None and torch.equal(loaded[0], features) and torch.equal(loaded[1], targets)
    assert cache.load("backbone_train", {**key, "encoder_sha256": "def"}) is None
    assert not list((tmp_path / "features").glob("*.tmp"))
    cache.path("backbone_train").write_bytes(b"truncated")  # a corrupt entry is recomputed, not an error
    assert cache.load("backbone_train", key) is None


def test_features_are_cached_and_recomputed_when_the_encoder_changes(tiny_run, tmp_path, monkeypatch):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("features"))
    first = EvaluationRun(run_dir).features("backbone", "test")
    assert (RunDirectory(run_dir).features / "backbone_test.safetensors").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("features were extracted again instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(evaluation_run, "extract_features_and_readable", fail)
        cached = EvaluationRun(run_dir).features("backbone", "test")
    assert torch.equal(cached[0], first[0]) and torch.equal(cached[1], first[1])

    # Another encoder in the same run directory (e.g. pretraining continued): the cache is stale.
    weights_path = RunDirectory(run_dir).encoder
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata()
    weights = load_file(str(weights_path))
    name = next(
        n for n in weights if n.startswith("backbone.") and n.endswith("weight") and weights[n].ndim == 4
    )
    weights[name] = weights[name] * 2
    save_file(weights, str(weights_path), metadata=metadata)
    recomputed = EvaluationRun(run_dir).features("backbone", "test")
    assert not torch.equal(recomputed[0], first[0])
    assert torch.equal(recomputed[1], first[1])


def test_baselines_and_unknown_kinds(tiny_run):
    run = EvaluationRun(tiny_run)
    pixels, targets = run.features("raw_pixels", "test")
    assert pixels.shape == (450, 64) and len(targets) == 450  # 8x8 digits
    untrained = run.features("random_init", "test")[0]
    assert not torch.allclose(untrained, run.features("backbone", "test")[0])
    with pytest.raises(ValueError, match="valid kinds"):
        run.features("pixels", "test")


def test_missing_run_pieces_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        EvaluationRun(tmp_path)


@pytest.mark.slow
def test_results_and_plot_reach_the_runs_wandb_summary(tmp_path):
    import wandb_offline
    from pretraining_runs import pretrain_tiny

    from ssl_toolkit.eval.knn import run_knn
    from ssl_toolkit.eval.maps import run_plot
    from ssl_toolkit.eval.probe import run_probe

    run_dir = pretrain_tiny(tmp_path, "wandb", "log.trackers=[wandb]")
    (run_id,) = wandb_offline.run_ids(run_dir)
    probe = run_probe(run_dir, baselines=True, weight_decay=1e-4)  # one fit per feature kind
    knn = run_knn(run_dir)
    run_plot(run_dir, max_points=100)
    # Each evaluation resumed the pretraining run by its id, so `wandb sync` merges them into one run.
    assert wandb_offline.run_ids(run_dir) == {run_id}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 4
    summary = wandb_offline.summary(run_dir)
    assert summary["probe/top1"] == pytest.approx(probe["top1"])
    assert summary["probe/raw_pixels_top1"] == pytest.approx(probe["raw_pixels_top1"])
    assert summary["knn/top1"] == pytest.approx(knn["top1"])
    assert summary["tsne/backbone"]["_type"] == "image-file"
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/tsne/backbone_*.png"))


def test_features_without_an_accelerator_equal_those_with_one(tiny_run):
    trained = load_encoder(RunDirectory(tiny_run).encoder)
    digits = create_dataset("digits", None, "test").with_transform(trained.transform())
    plain = extract_features(trained.backbone, digits, batch_size=100)
    accelerated = extract_features(trained.backbone, digits, Accelerator(cpu=True), batch_size=100)
    torch.testing.assert_close(plain[0], accelerated[0])
    assert torch.equal(plain[1], accelerated[1]) and plain[0].shape == (450, trained.feature_dim)


def test_the_encoder_transform_takes_pil_images_and_tensors_alike(tiny_run):
    from torchvision.transforms.v2.functional import to_pil_image

    trained = load_encoder(RunDirectory(tiny_run).encoder)
    transform = trained.transform()
    image, _ = create_dataset("digits", None, "test").load_image(0)
    torch.testing.assert_close(transform(to_pil_image(image)), transform(image))
    rgb = to_pil_image(image.expand(3, -1, -1))  # a colour file for a grayscale encoder
    assert transform(rgb).shape == (1, 8, 8)
