"""The protocols beside the L-BFGS probe: the SGD probe on augmented images, fine-tuning on a share of the
labels, RankMe, and the UMAP map."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.eval import classifier_training
from ssl_toolkit.eval.classifier_training import labelled_train_indices
from ssl_toolkit.eval.rankme import rankme, rankme_warning
from ssl_toolkit.eval.run import EvaluationRun
from ssl_toolkit.kinds.images.kind import CropAndFlip
from ssl_toolkit.run_dir import RunDirectory


def _rankme_by_numpy(x: np.ndarray) -> float:
    """Garrido et al.'s formula, restated: exp of the entropy of the normalised singular values."""
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("shape", [(300, 16), (12, 40)])
def test_rankme_is_the_entropy_of_the_singular_values(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, shape[1])
    assert rankme(x) == pytest.approx(_rankme_by_numpy(x.numpy()), rel=1e-9)


def test_rankme_tells_collapse_from_isotropic_features():
    generator = torch.Generator().manual_seed(1)
    isotropic = torch.randn(4000, 32, generator=generator)
    collapsed = torch.randn(4000, 1, generator=generator) * torch.randn(1, 32, generator=generator)
    assert rankme(isotropic) > 30 and rankme(collapsed) == pytest.approx(1.0, abs=1e-3)
    assert rankme_warning(rankme(isotropic), 32) is None
    assert "collapse" in rankme_warning(rankme(collapsed), 32)


def test_crop_and_flip_makes_normalised_crops_of_the_given_size():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8)
    crops = torch.stack([CropAndFlip(8, [0.5], [0.25])(image) for _ in range(20)])
    assert crops.shape == (20, 1, 8, 8)
    assert crops.min() >= -2 - 1e-6 and crops.max() <= 2 + 1e-6  # (x − 0.5) / 0.25 for x in [0, 1]
    assert len({tuple(crop.flatten().tolist()) for crop in crops}) > 10  # random crops, not one


def test_label_fractions_are_stratified_with_every_class_kept(tiny_run):
    run = EvaluationRun(tiny_run)
    targets = torch.as_tensor(run.train_set.targets)
    for fraction, per_class in ((0.0001, 1), (0.1, None)):
        chosen = labelled_train_indices(run, fraction)
        counts = torch.bincount(targets[chosen], minlength=run.num_classes)
        assert (counts >= 1).all()
        if per_class is not None:
            assert counts.tolist() == [per_class] * run.num_classes
        else:
            totals = torch.bincount(targets, minlength=run.num_classes)
            assert ((counts - 0.1 * totals).abs() <= 1).all()
    assert torch.equal(labelled_train_indices(run, 0.1), labelled_train_indices(run, 0.1))  # seeded
    assert len(labelled_train_indices(run, 1.0)) == len(targets)


@pytest.fixture
def recorded_training(monkeypatch):
    """The learning rate of every step, and whether the backbone's weights moved, for each classifier."""
    recorded: list[dict] = []
    real_sgd = torch.optim.SGD

    class RecordingSGD(real_sgd):
        def __init__(self, params, **options):
            params = list(params)
            super().__init__(params, **options)
            self.options, self.lrs = options, []
            recorded.append({"optimizer": self})

        def step(self, closure=None):
            self.lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(classifier_training.torch.optim, "SGD", RecordingSGD)
    return recorded


def test_sgd_probe_trains_a_linear_layer_over_the_frozen_backbone(tiny_run, recorded_training, capsys):
    before = RunDirectory(tiny_run).encoder.read_bytes()
    options = ["--protocol", "sgd", "--epochs", "3", "--batch-size", "128", "--min-scale", "0.5"]
    assert cli_main(["probe", str(tiny_run), *options]) == 0
    result = json.loads(RunDirectory(tiny_run).probe_result("linear", "sgd").read_text())
    assert result["protocol"] == "sgd" and result["features"] == "backbone"
    assert result["schedule"]["epochs"] == 3 and result["num_train"] == 1347
    # 10 digit classes (chance 0.1); a 2-step encoder of 8 px images, trained on 3 epochs of crops and flips.
    assert result["top1"] > 0.2
    assert "linear probe (SGD on augmented images" in capsys.readouterr().out
    assert not RunDirectory(tiny_run).probe.exists()  # the L-BFGS result is another file
    assert RunDirectory(tiny_run).encoder.read_bytes() == before
    (record,) = recorded_training
    optimizer = record["optimizer"]
    # Only the head learns: standardisation without parameters, then (F → 10) weights and biases.
    shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
    assert shapes == [(10, result["feature_dim"]), (10,)]
    assert optimizer.options["nesterov"] and optimizer.options["momentum"] == 0.9
    steps = len(optimizer.lrs)
    assert steps == 3 * (1347 // 128)
    peak = 0.1 * 128 / 256
    expected = [peak * 0.5 * (1 + np.cos(np.pi * step / steps)) for step in range(steps)]
    np.testing.assert_allclose(optimizer.lrs, expected, rtol=1e-12)


def test_finetuning_trains_the_whole_backbone_on_each_label_fraction(tiny_run, recorded_training):
    for fraction, epochs in (("0.01", "2"), ("0.1", "8")):
        options = [
            "--label-fraction",
            fraction,
            "--epochs",
            epochs,
            "--batch-size",
            "32",
            "--min-scale",
            "0.5",
        ]
        assert cli_main(["finetune", str(tiny_run), *options]) == 0
    results = json.loads(RunDirectory(tiny_run).finetune.read_text())
    assert set(results) == {"0.01", "0.1"}
    one_percent, ten_percent = results["0.01"], results["0.1"]
    assert one_percent["protocol"] == "finetune" and one_percent["label_fraction"] == 0.01
    assert one_percent["num_train"] < ten_percent["num_train"] < 1347
    assert one_percent["num_train"] >= 10  # at least one image per class
    assert ten_percent["top1"] > 0.2 and one_percent["schedule"]["lr"] == 0.05  # chance: 0.1
    backbone_parameters = sum(1 for _ in EvaluationRun(tiny_run).encoder.backbone.parameters())
    for record in recorded_training:
        trained = [p for group in record["optimizer"].param_groups for p in group["params"]]
        assert len(trained) == backbone_parameters + 2  # the backbone and the linear layer


@pytest.mark.parametrize(
    "arguments, phrase",
    [
        (["probe", "--protocol", "sgd", "--baselines"], "--baselines"),
        (["probe", "--protocol", "sgd", "--features", "projection"], "--features"),
        (["probe", "--epochs", "3"], "--protocol sgd"),
        (["probe", "--protocol", "sgd", "--lr", "-1"], "--lr"),
        (["finetune", "--label-fraction", "0"], "--label-fraction"),
        (["finetune", "--label-fraction", "0.1", "--epochs", "0"], "--epochs"),
        (["plot", "--method", "umap", "--max-points", "1"], "--max-points"),
    ],
)
def test_bad_protocol_options_are_one_line_and_exit_2(tiny_run, capsys, arguments, phrase):
    command, *options = arguments
    assert cli_main([command, str(tiny_run), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and phrase in error and "\n" not in error


@pytest.mark.slow
def test_a_umap_map_of_the_test_features(tiny_run, capsys, monkeypatch):
    # umap-learn's numba functions run as plain Python here: compiling them takes half a minute in a fresh
    # environment, and what is tested is the command around them, on 60 points.
    if "numba" not in sys.modules:
        monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    assert cli_main(["plot", str(tiny_run), "--method", "umap", "--max-points", "60"]) == 0
    path = RunDirectory(tiny_run).feature_map("umap", "backbone")
    assert path.is_file() and path.stat().st_size > 10_000
    assert f"UMAP map written to {path}" in capsys.readouterr().out


@pytest.mark.slow
def test_sgd_probe_and_finetuning_run_under_accelerate_launch(two_process_evaluations):
    evaluated = two_process_evaluations
    for command in ("sgd_probe", "finetune"):
        for process in evaluated.printed(command):
            assert process["exit_code"] == 0, process["stderr"][-3000:]
    probe = json.loads(evaluated.tiny.probe_result("linear", "sgd").read_text())
    finetune = json.loads(evaluated.tiny.finetune.read_text())["0.1"]
    for result in (probe, finetune):
        assert result["processes"] == 2 and result["global_batch"] == 512 and result["num_test"] == 450
