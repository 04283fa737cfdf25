"""Pretraining through the real loop: what it writes, what it trains, and the options that change a step."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from pretraining_runs import QUICKSTART, logged_losses, pretrain_tiny, records, tiny_config
from safetensors.torch import load_file

from ssl_toolkit import pretrain as pretrain_module
from ssl_toolkit.config import LossSection, load_config, to_dict
from ssl_toolkit.encoder_file import load_encoder
from ssl_toolkit.kinds.images.backbones import create_encoder
from ssl_toolkit.losses import create_loss
from ssl_toolkit.optim import create_optimizer
from ssl_toolkit.process.status import ExitCode
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training import objective as objective_module
from ssl_toolkit.training.checkpoint_files import read_description
from ssl_toolkit.training.objective import ContrastiveObjective


def test_two_step_run_writes_the_run_directory(tiny_run):
    run = RunDirectory(tiny_run)
    assert to_dict(load_config(run.config))["train"]["max_steps"] == 2
    logged = records(tiny_run)
    assert [r["step"] for r in logged] == [1, 2]
    for record in logged:
        assert {"step", "epoch", "loss", "lr"} <= record.keys()
        assert torch.isfinite(torch.tensor(record["loss"]))
    assert [p.name for p in run.checkpoint_dirs()] == ["step_00000001", "step_00000002"]
    assert not list(run.checkpoints.glob(".tmp*"))
    summary = run.read_summary()
    assert summary["steps"] == 2 and summary["seconds"] > 0 and summary["final_loss"] == logged[-1]["loss"]
    assert summary["views_per_s"] == pytest.approx(2 * summary["samples_per_s"])
    # On CPU, the process's resident-set high-water mark: PyTorch alone takes more than 50 MiB.
    assert summary["peak_memory_kind"] == "cpu_max_rss" and 50 < summary["peak_memory_mb"] < 64 * 1024


def test_encoder_file_rebuilds_the_model_with_its_preprocessing(tiny_run):
    trained = load_encoder(RunDirectory(tiny_run).encoder)
    assert trained.kind == "image" and trained.spec.backbone == "test_resnet" and trained.spec.in_chans == 1
    assert trained.metadata["step"] == 2
    assert trained.preprocessing["image_size"] == 8 and trained.preprocessing["channels"] == 1
    assert len(trained.preprocessing["mean"]) == len(trained.preprocessing["std"]) == 1
    h, z = trained.encoder(torch.zeros(3, 1, 8, 8))
    assert h.shape == (3, trained.feature_dim) and z.shape == (3, 16)


def test_checkpoint_reloads_the_trained_weights_and_step(tiny_run):
    run = RunDirectory(tiny_run)
    config = load_config(run.config)
    spec = load_encoder(run.encoder).spec
    torch.manual_seed(123)  # different initial weights from the run's
    objective = ContrastiveObjective(
        create_encoder(spec), create_loss(config.loss.name, **config.loss.options)
    )
    optimizer = create_optimizer(objective, config.optim.name, lr=0.1, weight_decay=0.0)
    accelerator = Accelerator()
    objective, optimizer = accelerator.prepare(objective, optimizer)
    accelerator.load_state(str(run.checkpoint_dirs()[-1]))
    assert read_description(run.checkpoint_dirs()[-1])["step"] == 2
    final_weights = load_file(str(run.encoder))
    for name, value in objective.encoder.state_dict().items():
        torch.testing.assert_close(value, final_weights[name], rtol=0, atol=0)
    assert len(optimizer.state) > 0  # momentum buffers came back too


def _weights(run_dir):
    return load_file(str(RunDirectory(run_dir).encoder))


def _changed_weights(run_dir):
    """Weight tensors of the run's encoder that differ from the seed's initial ones."""
    trained = _weights(run_dir)
    torch.manual_seed(0)
    untrained = create_encoder(load_encoder(RunDirectory(run_dir).encoder).spec).state_dict()
    return [
        name
        for name in trained
        if name.endswith("weight") and not torch.equal(trained[name], untrained[name])
    ]


def test_training_changes_the_weights_and_is_seeded(tmp_path):
    first = pretrain_tiny(tmp_path, "a", "train.max_steps=1")
    second = pretrain_tiny(tmp_path, "b", "train.max_steps=1")
    a, b = _weights(first), _weights(second)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert _changed_weights(first), "one optimiser step left every weight as initialised"


def test_batch_views_made_by_kornia_train_the_encoder(tmp_path):
    # On this CPU-only machine the batch pipeline runs kornia on the CPU: the same code path as on CUDA.
    per_batch = pretrain_tiny(tmp_path, "kornia", "augment.device=gpu")
    per_image = pretrain_tiny(tmp_path, "per_image", "augment.device=cpu")
    assert all(torch.isfinite(torch.tensor(logged_losses(per_batch))))
    assert _changed_weights(per_batch)
    # Other random draws than the per-image pipeline's: the same seed gives other views, another encoder.
    assert any(
        not torch.equal(value, _weights(per_image)[name]) for name, value in _weights(per_batch).items()
    )


@pytest.fixture
def loss_inputs(monkeypatch):
    """What the objective hands to `loss_over_views` at each step: (views, rows per view, labels)."""
    seen = []
    real = objective_module.loss_over_views

    def spy(loss, views, class_labels=None):
        seen.append(
            (len(views), [len(v) for v in views], None if class_labels is None else class_labels.clone())
        )
        return real(loss, views, class_labels)

    monkeypatch.setattr(objective_module, "loss_over_views", spy)
    return seen


def test_multi_crop_feeds_the_large_and_the_small_views_to_the_loss(tmp_path, loss_inputs):
    overrides = ("loss.name=supcon", "augment.n_views=3", "augment.small_crops=2", "augment.small_size=6")
    run_dir = pretrain_tiny(tmp_path, "multicrop", *overrides)
    assert all(torch.isfinite(torch.tensor(logged_losses(run_dir))))
    assert [(count, rows) for count, rows, _ in loss_inputs] == [(5, [32] * 5)] * 2


def test_ntxent_with_more_than_two_views_is_a_config_error(tmp_path):
    from ssl_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="supcon"):
        tiny_config(tmp_path, "bad", "augment.n_views=3")


def test_learnable_loss_parameters_are_trained(tmp_path):
    config = tiny_config(tmp_path, "sigmoid")
    config.loss = LossSection("sigmoid")  # the recipe's temperature is not a sigmoid argument
    run_dir = pretrain_tiny(tmp_path, config=config)
    state = load_file(str(RunDirectory(run_dir).checkpoint_dirs()[-1] / "model.safetensors"))
    assert state["loss.bias"].item() != -10.0  # the optimiser moved the loss's bias


def test_supervised_labels_are_the_positives_of_supcon_and_arcface(tmp_path, loss_inputs):
    supervised = pretrain_tiny(tmp_path, "supcon", "loss.name=supcon", "loss.supervised=true")
    labels = loss_inputs[0][2]
    assert labels is not None and labels.dtype == torch.long and 1 < len(labels.unique()) <= 10
    self_supervised = pretrain_tiny(tmp_path, "simclr_views", "loss.name=supcon")
    assert loss_inputs[-1][2] is None  # without supervision the views' sample ids are the labels
    # Same seed, same first batch and views: only the positives differ, and so does the loss.
    assert logged_losses(supervised)[0] != pytest.approx(logged_losses(self_supervised)[0], rel=1e-3)
    config = tiny_config(tmp_path, "arcface")
    config.loss = LossSection("arcface", supervised=True)  # num_classes and embedding_dim filled in
    arcface = pretrain_tiny(tmp_path, config=config)
    assert all(torch.isfinite(torch.tensor(logged_losses(arcface))))
    centres = load_file(str(RunDirectory(arcface).checkpoint_dirs()[-1] / "model.safetensors"))[
        "loss.centres"
    ]
    assert centres.shape == (10, 16)


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
    run_dir = pretrain_tiny(
        tmp_path, "folder", "data.name=imagefolder", f"data.root={tmp_path / 'images'}", "train.batch_size=40"
    )
    assert records(run_dir)[-1]["unreadable_images"] == 1
    assert "broken.png" in RunDirectory(run_dir).unreadable_inputs.read_text()


def test_a_missing_dataset_stops_with_one_message_and_no_traceback(tmp_path, capsys):
    arguments = [
        str(QUICKSTART), "data.name=fashion_mnist", f"data.root={tmp_path / 'nowhere'}",
        f"run.output_dir={tmp_path}",
    ]  # fmt: skip
    assert pretrain_module.main(arguments) == ExitCode.BAD_INPUT
    errors = capsys.readouterr().err
    assert errors.startswith("error: data.name='fashion_mnist'") and "Traceback" not in errors
    assert str(tmp_path / "nowhere") in errors and "dataset-fashion-mnist" in errors
    # The refused attempt trained nothing: the same command with the data fixed takes the directory.
    assert RunDirectory(tmp_path / "quickstart").outcome.is_file()
    fixed = ["data.name=digits", "data.root=null", "data.image_size=8", "model.backbone=test_resnet"]
    assert pretrain_module.main([*arguments, *fixed, "train.max_steps=1", "log.trackers=[]"]) == ExitCode.OK


@pytest.mark.slow  # W&B starts a service process
def test_wandb_offline_run_with_the_view_grid_lands_in_the_run_directory(tmp_path):
    run_dir = pretrain_tiny(tmp_path, "wandb", "log.trackers=[wandb]")
    (offline_run,) = RunDirectory(run_dir).wandb.glob("offline-run-*")
    images = list((offline_run / "files" / "media" / "images").glob("views_*.png"))
    assert images, "the view grid was not logged"


def test_logged_batch_statistics_and_online_knn(tmp_path):
    logged = records(pretrain_tiny(tmp_path, "stats", "log.knn_every=2"))
    for record in logged:
        assert 0.0 <= record["alignment"] <= 4.0 and record["uniformity"] <= 0.0
        assert -1.0 <= record["negative_similarity"] <= record["positive_similarity"] + 1.0
        assert record["grad_norm"] > 0
    assert "knn_top1" not in logged[0] and 0.1 < logged[-1]["knn_top1"] <= 1.0  # digits: far above chance


def test_tensorboard_gets_the_metrics_and_a_view_grid_with_each_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = pretrain_tiny(tmp_path, "tensorboard", "log.trackers=[tensorboard]", "log.knn_every=1")
    scalars, image_steps = set(), []
    for folder in {path.parent for path in run_dir.rglob("events.out.tfevents.*")}:  # hparams get their own
        accumulator = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
        scalars |= set(accumulator.Tags()["scalars"])
        if "views" in accumulator.Tags()["images"]:
            image_steps += [event.step for event in accumulator.Images("views")]
    assert {"loss", "lr", "knn_top1", "alignment"} <= scalars
    assert sorted(image_steps) == [1, 2]  # the views of each step that ran an evaluation


@pytest.mark.slow  # dynamo traces the encoder
def test_a_compiled_encoder_trains_like_the_eager_one_and_saves_plain_names(tmp_path, tiny_run, monkeypatch):
    # Dynamo traces the encoder and hands the graph to its eager backend: the toolkit's side of compiling
    # (what is compiled, what is saved) without inductor's code generation, which the next test runs.
    compiled_modules = []

    def compile_eagerly(module, **options):
        compiled_modules.append(module)
        return real_compile(module, backend="eager", **options)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    compiled = pretrain_tiny(tmp_path, "compiled", "train.compile=true")
    assert [type(module).__name__ for module in compiled_modules] == ["Encoder"]
    torch.testing.assert_close(logged_losses(compiled), logged_losses(tiny_run), rtol=1e-4, atol=1e-5)
    trained = load_encoder(RunDirectory(compiled).encoder)  # plain names, no "_orig_mod."
    assert trained.encoder(torch.zeros(2, 1, 8, 8))[1].shape == (2, 16)


@pytest.mark.slow
def test_inductor_compiles_an_encoder_that_trains_like_the_eager_one(tmp_path):
    overrides = ["train.max_steps=1", "model.backbone=small_convnet", "model.backbone_args={widths: [4]}"]
    compiled = pretrain_tiny(tmp_path, "compiled", "train.compile=true", *overrides)
    eager = pretrain_tiny(tmp_path, "eager", *overrides)
    torch.testing.assert_close(logged_losses(compiled), logged_losses(eager), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("precision", "device", "avx512_bf16", "amx", "warned"),
    [
        ("bf16", "cpu", False, False, True),
        ("bf16", "cpu", True, False, False),
        ("bf16", "cpu", False, True, False),
        ("no", "cpu", False, False, False),
        ("bf16", "cuda", False, False, False),
    ],
)
def test_bf16_is_named_as_slow_only_on_a_cpu_that_emulates_it(
    monkeypatch, precision, device, avx512_bf16, amx, warned
):
    from ssl_toolkit import build

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    warning = build.cpu_bf16_warning(precision, torch.device(device))
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith("warning: train.mixed_precision=bf16 on a CPU without AVX512-BF16 or AMX")
        assert warning.endswith("train.mixed_precision=no trains faster on this machine")


class FirstStepReached(Exception):
    """Raised in place of the first training step."""


def test_a_bf16_run_on_such_a_cpu_prints_the_warning_before_it_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    def first_step(*args):
        raise FirstStepReached

    # No bf16 step runs: the warning is printed before the first one (whose numerics are the CPU's).
    monkeypatch.setattr(pretrain_module, "train_step", lambda *args: first_step)
    with pytest.raises(FirstStepReached):
        pretrain_tiny(tmp_path, "bf16", "train.max_steps=1", "train.mixed_precision=bf16")
    out = capsys.readouterr().out
    warning = out.index("warning: train.mixed_precision=bf16 on a CPU without AVX512-BF16 or AMX")
    assert warning < out.index("pretraining ")
