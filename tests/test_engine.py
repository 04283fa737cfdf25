from __future__ import annotations

import json

import torch
from accelerate import Accelerator
from conftest import tiny_config
from safetensors.torch import load_file

from ssl_toolkit.config import load_config, to_dict
from ssl_toolkit.engine import TrainingProgress, checkpoint_dirs
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
    encoder = create_encoder(spec)
    optimizer = create_optimizer(encoder, config.optim.name, lr=0.1, weight_decay=0.0)
    accelerator = Accelerator()
    encoder, optimizer = accelerator.prepare(encoder, optimizer)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    accelerator.load_state(str(checkpoint_dirs(tiny_run)[-1]))
    assert progress.step == 2
    final_weights = load_file(str(tiny_run / "encoder.safetensors"))
    for name, value in encoder.state_dict().items():
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
