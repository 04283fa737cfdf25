"""The online linear probe: trained on the detached features of each batch, it leaves the encoder alone."""

from __future__ import annotations

import statistics

import pytest
import torch
from pretraining_runs import pretrain_tiny, records
from safetensors.torch import load_file

from ssl_toolkit import build
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.online_probe import STATE_FILE


@pytest.fixture
def recorded_gradients(monkeypatch):
    """Every encoder parameter's gradient at each optimiser step of the runs that follow, per run."""
    runs: list[list[list[torch.Tensor]]] = []
    real_optimizer = build.optimizer

    def recording_optimizer(config, model, num_processes):
        optimizer, peak_lr = real_optimizer(config, model, num_processes)
        steps: list[list[torch.Tensor]] = []
        runs.append(steps)
        real_step = optimizer.step
        parameters = list(model.encoder.parameters())

        def step(*args, **kwargs):
            steps.append([p.grad.clone() for p in parameters if p.grad is not None])
            return real_step(*args, **kwargs)

        optimizer.step = step
        return optimizer, peak_lr

    monkeypatch.setattr(build, "optimizer", recording_optimizer)
    return runs


def _encoder_weights(run_dir):
    return load_file(str(RunDirectory(run_dir).encoder))


@pytest.mark.parametrize("chunk", [0, 16], ids=["plain", "grad_cache"])
def test_the_online_probe_leaves_every_gradient_and_weight_of_the_encoder_bit_identical(
    tmp_path, recorded_gradients, chunk
):
    options = ["train.max_steps=4", "log.knn_every=2", f"train.grad_cache_chunk={chunk}"]
    with_probe = pretrain_tiny(tmp_path, "probe", *options, "log.online_probe=true")
    without = pretrain_tiny(tmp_path, "plain", *options, "log.online_probe=false")
    probed_steps, plain_steps = recorded_gradients
    assert len(probed_steps) == len(plain_steps) == 4
    for probed, plain in zip(probed_steps, plain_steps, strict=True):
        assert len(probed) == len(plain) > 0
        for a, b in zip(probed, plain, strict=True):
            assert torch.equal(a, b)
    probe_weights, plain_weights = _encoder_weights(with_probe), _encoder_weights(without)
    assert probe_weights.keys() == plain_weights.keys()
    assert all(torch.equal(probe_weights[k], plain_weights[k]) for k in probe_weights)
    probed_records, plain_records = records(with_probe), records(without)
    assert [r["loss"] for r in probed_records] == [r["loss"] for r in plain_records]
    # ... and the probe did train and report: on every record, and with each evaluation.
    assert all("online_probe_loss" in r for r in probed_records)
    assert not any("online_probe_loss" in r for r in plain_records)
    assert [r["step"] for r in probed_records if "online_probe_top1" in r] == [2, 4]
    final = RunDirectory(with_probe).read_summary()
    assert final["online_probe_top1"] == probed_records[-1]["online_probe_top1"]
    assert final["knn_top1"] == probed_records[-1]["knn_top1"]


def test_the_online_probe_learns_the_classes_from_the_training_batches(tmp_path):
    run_dir = pretrain_tiny(
        tmp_path, "learns", "train.max_steps=60", "log.knn_every=60", "log.online_probe_lr=0.01"
    )
    logged = records(run_dir)
    losses = [r["online_probe_loss"] for r in logged]
    assert losses[0] == pytest.approx(torch.log(torch.tensor(10.0)).item(), rel=1e-4)  # zero weights
    # The probe's loss on each batch's augmented views is noisy and its features move as the encoder
    # trains: its mean falls from the first ten steps to the last ten (by 0.19 on an AMD EPYC Zen 5).
    assert statistics.mean(losses[-10:]) < statistics.mean(losses[:10]) - 0.1
    # Digits, 10 classes (chance 0.1): a 60-step encoder of 8 px crops, scored on unaugmented test images.
    assert logged[-1]["online_probe_top1"] > 0.3


def test_the_online_probe_resumes_from_the_checkpoint_as_if_never_stopped(tmp_path):
    whole = pretrain_tiny(tmp_path, "whole", "train.max_steps=4")
    pretrain_tiny(tmp_path, "halves", "train.max_steps=2")
    halves = pretrain_tiny(tmp_path, "halves", "train.max_steps=4", "train.resume=auto")
    saved = [load_file(str(RunDirectory(d).checkpoint(4) / STATE_FILE)) for d in (whole, halves)]
    assert saved[0].keys() == saved[1].keys() and any(k.startswith("optimizer.") for k in saved[0])
    for key in saved[0]:
        assert torch.equal(saved[0][key], saved[1][key]), key


def test_the_online_probe_is_off_without_labels_or_when_turned_off(tmp_path):
    from accelerate import Accelerator
    from pretraining_runs import tiny_config

    from ssl_toolkit.kinds.images.datasets.image_tensor_dataset import ImageTensorDataset

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    labelled = ImageTensorDataset(images, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    unlabelled = ImageTensorDataset(images, torch.full((4,), -1), ["a", "b"])
    accelerator = Accelerator(cpu=True)
    config = tiny_config(tmp_path)
    assert build.online_probe(config, labelled, accelerator, 8) is not None
    assert build.online_probe(config, unlabelled, accelerator, 8) is None
    config.log.online_probe = False
    assert build.online_probe(config, labelled, accelerator, 8) is None
