from __future__ import annotations

import json

import torch
from accelerate import Accelerator
from pretraining_runs import logged_losses, tiny_config
from safetensors.torch import load_file

from ssl_toolkit.config import load_config, to_dict
from ssl_toolkit.engine import ContrastiveObjective, TrainingProgress, checkpoint_dirs
from ssl_toolkit.losses import create_loss
from ssl_toolkit.models import create_encoder, load_encoder
from ssl_toolkit.optim import create_optimizer


def test_two_step_run_writes_the_run_directory(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    assert to_dict(load_config(tiny_run / "config.yaml"))["train"]["max_steps"] == 2
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert {"step", "epoch", "loss", "lr"} <= record.keys()
        assert torch.isfinite(torch.tensor(record["loss"]))
    assert [p.name for p in checkpoint_dirs(tiny_run)] == ["step_00000001", "step_00000002"]
    assert not list((tiny_run / "checkpoints").glob(".tmp*"))


def test_encoder_file_rebuilds_the_model(tiny_run):
    encoder, spec, extra = load_encoder(tiny_run / "encoder.safetensors")
    assert spec.backbone == "test_resnet" and spec.in_chans == 1 and spec.proj_dim == 16
    assert extra["step"] == 2
    h, z = encoder.eval()(torch.zeros(3, 1, 8, 8))
    assert h.shape == (3, encoder.feature_dim) and z.shape == (3, 16)


def test_checkpoint_reloads_the_trained_weights_and_step(tiny_run):
    config = load_config(tiny_run / "config.yaml")
    _, spec, _ = load_encoder(tiny_run / "encoder.safetensors")
    torch.manual_seed(123)  # different initial weights from the run's
    objective = ContrastiveObjective(
        create_encoder(spec), create_loss(config.loss.name, **config.loss.options)
    )
    optimizer = create_optimizer(objective, config.optim.name, lr=0.1, weight_decay=0.0)
    accelerator = Accelerator()
    objective, optimizer = accelerator.prepare(objective, optimizer)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    accelerator.load_state(str(checkpoint_dirs(tiny_run)[-1]))
    assert progress.step == 2
    final_weights = load_file(str(tiny_run / "encoder.safetensors"))
    for name, value in objective.encoder.state_dict().items():
        torch.testing.assert_close(value, final_weights[name], rtol=0, atol=0)
    assert len(optimizer.state) > 0  # momentum buffers came back too


def test_training_changes_the_weights_and_is_seeded(tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from ssl_toolkit.engine import pretrain

    first = pretrain(tiny_config(tmp_path, "a", "train.max_steps=1"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    second = pretrain(tiny_config(tmp_path, "b", "train.max_steps=1"))
    a = load_file(str(first / "encoder.safetensors"))
    b = load_file(str(second / "encoder.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    torch.manual_seed(0)
    untrained = create_encoder(load_encoder(first / "encoder.safetensors")[1]).state_dict()
    changed = [name for name in a if name.endswith("weight") and not torch.equal(a[name], untrained[name])]
    assert changed, "one optimiser step left every weight as initialised"


def _run(tmp_path, name, *overrides):
    from ssl_toolkit.engine import pretrain

    return pretrain(tiny_config(tmp_path, name, *overrides))


def test_batch_views_made_by_kornia_on_the_accelerator(tmp_path):
    # On this CPU-only machine the "gpu" pipeline runs kornia on the CPU: the same code path as on CUDA.
    run_dir = _run(tmp_path, "kornia", "augment.device=gpu")
    assert all(torch.isfinite(torch.tensor(logged_losses(run_dir))))


def test_more_views_and_multi_crop_use_the_label_form(tmp_path):
    run_dir = _run(
        tmp_path,
        "multicrop",
        "loss.name=supcon",
        "augment.n_views=3",
        "augment.small_crops=2",
        "augment.small_size=6",
    )
    assert all(torch.isfinite(torch.tensor(logged_losses(run_dir))))


def test_ntxent_with_more_than_two_views_is_a_config_error(tmp_path):
    import pytest

    from ssl_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="supcon"):
        _run(tmp_path, "bad", "augment.n_views=3")


def test_learnable_loss_parameters_are_trained(tmp_path):
    from ssl_toolkit.config import LossSection
    from ssl_toolkit.engine import pretrain

    config = tiny_config(tmp_path, "sigmoid")
    config.loss = LossSection("sigmoid")  # the recipe's temperature is not a sigmoid argument
    run_dir = pretrain(config)
    from safetensors.torch import load_file as load_state

    checkpoint = checkpoint_dirs(run_dir)[-1] / "model.safetensors"
    state = load_state(str(checkpoint))
    assert state["loss.bias"].item() != -10.0  # the optimiser moved the loss's bias


def test_a_corrupt_image_is_skipped_counted_and_the_run_finishes(tmp_path):
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 6)):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = generator.integers(0, 256, (12 + index % 3, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    (tmp_path / "images" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    run_dir = _run(
        tmp_path, "folder", "data.name=imagefolder", f"data.root={tmp_path / 'images'}", "train.batch_size=40"
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["unreadable_images"] == 1
    assert "broken.png" in (run_dir / "unreadable_images.txt").read_text()


def test_a_missing_dataset_stops_with_one_message_and_no_traceback(tmp_path):
    import subprocess
    import sys

    from pretraining_runs import REPO

    result = subprocess.run(
        [
            sys.executable, "-m", "ssl_toolkit.pretrain", str(REPO / "recipes" / "quickstart.yaml"),
            "data.name=fashion_mnist", f"data.root={tmp_path / 'nowhere'}", f"run.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere") in result.stderr and "dataset-fashion-mnist" in result.stderr


def test_wandb_offline_run_with_the_view_grid_lands_in_the_run_directory(tmp_path):
    run_dir = _run(tmp_path, "wandb", "log.trackers=[wandb]")
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    images = list((offline_run / "files" / "media" / "images").glob("views_*.png"))
    assert images, "the view grid was not logged"


def test_supervised_supcon_and_arcface_use_the_class_labels(tmp_path):
    from ssl_toolkit.config import LossSection
    from ssl_toolkit.engine import pretrain

    run_dir = _run(tmp_path, "supcon", "loss.name=supcon", "loss.supervised=true")
    assert all(torch.isfinite(torch.tensor(logged_losses(run_dir))))
    config = tiny_config(tmp_path, "arcface")
    config.loss = LossSection("arcface", supervised=True)  # num_classes and embedding_dim filled in
    assert all(torch.isfinite(torch.tensor(logged_losses(pretrain(config)))))


def test_logged_batch_statistics_and_online_knn(tmp_path):
    run_dir = _run(tmp_path, "stats", "log.knn_every=2")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert 0.0 <= record["alignment"] <= 4.0 and record["uniformity"] <= 0.0
        assert -1.0 <= record["negative_similarity"] <= record["positive_similarity"] + 1.0
        assert record["grad_norm"] > 0
    assert "knn_top1" not in records[0] and 0.1 < records[-1]["knn_top1"] <= 1.0  # digits: far above chance


def test_tensorboard_gets_the_metrics_and_periodic_view_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run(tmp_path, "tensorboard", "log.trackers=[tensorboard]", "log.knn_every=1")
    scalars, image_steps = set(), []
    for folder in {path.parent for path in run_dir.rglob("events.out.tfevents.*")}:  # hparams get their own
        accumulator = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
        scalars |= set(accumulator.Tags()["scalars"])
        if "views" in accumulator.Tags()["images"]:
            image_steps += [event.step for event in accumulator.Images("views")]
    assert {"loss", "lr", "knn_top1", "alignment"} <= scalars
    assert sorted(image_steps) == [0, 1]  # the first step's views, then with each kNN evaluation


def test_compiled_encoder_trains_and_saves_loadable_weights(tmp_path):
    run_dir = _run(tmp_path, "compiled", "train.compile=true")
    encoder, _, _ = load_encoder(run_dir / "encoder.safetensors")  # plain names, no "_orig_mod."
    assert all(torch.isfinite(torch.tensor(logged_losses(run_dir))))
    assert encoder.eval()(torch.zeros(2, 1, 8, 8))[1].shape == (2, 16)
