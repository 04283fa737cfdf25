"""Evaluating a run pretrained on an image folder: channels, empty class folders, unreadable images."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from image_folders import CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, corrupt_file, write_folder
from pretraining_runs import pretrain_tiny

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.encoder_file import load_encoder
from ssl_toolkit.eval.features import extract_features
from ssl_toolkit.eval.knn import run_knn
from ssl_toolkit.eval.probe import run_probe
from ssl_toolkit.eval.run import EvaluationRun
from ssl_toolkit.kinds.images.datasets import UnreadableImageWarning, create_dataset
from ssl_toolkit.run_dir import RunDirectory


@pytest.fixture(scope="module")
def _folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder_run")
    root = write_folder(base / "images")
    run_dir = pretrain_tiny(
        base / "runs", "folder", "data.name=imagefolder", f"data.root={root}", "log.knn_every=1"
    )
    return root, run_dir


@pytest.fixture
def folder_run(_folder_run, tmp_path):
    """This test's own copy of the image folder and of the run evaluated on it (data.root points to it)."""
    root, run_dir = _folder_run
    own_root = shutil.copytree(root, tmp_path / "images")
    own_run = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("features"))
    return own_root, own_run, [f"data.root={own_root}"]


def test_a_grayscale_first_file_leaves_the_run_and_its_evaluation_in_colour(folder_run):
    _, run_dir, overrides = folder_run
    assert load_encoder(RunDirectory(run_dir).encoder).preprocessing["channels"] == 3
    assert "knn_top1" in RunDirectory(run_dir).read_metrics()[-1]  # the online kNN ran on colour images
    run = EvaluationRun(run_dir, overrides)
    assert run.train_set[0][0].shape[0] == 3 and run.test_set[0][0].shape[0] == 3
    assert run.features("backbone", "test")[0].shape[0] == 3 * TEST_PER_CLASS + 1


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def test_an_empty_class_folder_is_reported_and_the_probe_runs_on_the_rest(folder_run, capsys):
    root, run_dir, overrides = folder_run
    _empty(root / "train" / "c")
    _empty(root / "test" / "c")
    assert cli_main(["probe", str(run_dir), *overrides]) == 0
    errors = capsys.readouterr().err
    assert errors.count(str(root / "train" / "c")) == 1 and errors.count(str(root / "test" / "c")) == 1
    written = json.loads(RunDirectory(run_dir).probe.read_text())
    assert written["num_train"] == 2 * TRAIN_PER_CLASS + 1 and written["num_test"] == 2 * TEST_PER_CLASS + 1
    assert 0.0 <= written["auroc"] <= 1.0 and written["classes"] == list(CLASSES)
    assert len(written["confusion_matrix"]) == 3


def test_a_test_split_of_one_class_gives_a_null_auroc_and_strict_json(folder_run):
    root, run_dir, overrides = folder_run
    for name in ("b", "c"):
        shutil.rmtree(root / "test" / name)
    result = run_probe(run_dir, overrides)
    assert result["num_test"] == TEST_PER_CLASS + 1
    text = RunDirectory(run_dir).probe.read_text()
    assert json.loads(text, parse_constant=_reject_constant)["auroc"] is None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_unreadable_images_are_dropped_from_evaluation_and_counted(folder_run, capsys):
    root, run_dir, overrides = folder_run
    corrupt_file(root / "test" / "b" / "img_02.png")
    corrupt_file(root / "train" / "c" / "img_05.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        probe = run_probe(run_dir, overrides)
        knn = run_knn(run_dir, overrides, k=5)
        cached = EvaluationRun(run_dir, overrides)  # features from the cache: the count comes with them
        test_x, test_y = cached.features("backbone", "test")
    errors = capsys.readouterr().err
    assert "1 unreadable test image" in errors and "1 unreadable train image" in errors
    for result, path in ((probe, RunDirectory(run_dir).probe), (knn, RunDirectory(run_dir).knn)):
        written = json.loads(path.read_text())
        assert written["unreadable_images"] == result["unreadable_images"] == 2
        assert written["num_test"] == 3 * TEST_PER_CLASS + 1 - 1
        assert written["num_train"] == 3 * TRAIN_PER_CLASS + 1 - 1
    # No item took the place of the unreadable one: one b image fewer, every label as in the folder.
    assert torch.bincount(test_y).tolist() == [TEST_PER_CLASS + 1, TEST_PER_CLASS - 1, TEST_PER_CLASS]
    assert cached.unreadable == {"test": 1} and len(test_x) == len(test_y)


def test_feature_extraction_keeps_the_order_and_drops_unreadable_items(folder_run):
    root, run_dir, overrides = folder_run
    bad = corrupt_file(root / "test" / "a" / "img_03.png")
    run = EvaluationRun(run_dir, overrides)
    files = create_dataset("imagefolder", root, "test")  # the same items, in the same order
    paths = [files.path(i) for i in range(len(files))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        # Batches of 5 with a last, partial batch: the validity mask is gathered with the features.
        features, targets = extract_features(
            lambda x: x.flatten(1), run.test_set, Accelerator(cpu=True), batch_size=5
        )
    kept = [i for i, path in enumerate(paths) if path != str(bad)]
    assert len(features) == len(kept) == len(paths) - 1
    expected = torch.stack([run.test_set[i][0].flatten() for i in kept])
    torch.testing.assert_close(features, expected)
    assert targets.tolist() == [int(run.test_set.targets[i]) for i in kept]


def test_training_still_replaces_an_unreadable_image_by_the_next(folder_run):
    root, _, _ = folder_run
    corrupt_file(root / "train" / "b" / "img_00.png")
    dataset = create_dataset("imagefolder", root, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        items = list(dataset)
    assert len(items) == len(dataset)


@pytest.mark.slow
def test_two_processes_drop_the_same_unreadable_image_as_one(two_process_evaluations):
    from safetensors.torch import load_file

    evaluated = two_process_evaluations
    main, other = evaluated.printed("folder_knn")
    assert main["exit_code"] == other["exit_code"] == 0, main["stderr"][-3000:] + other["stderr"][-3000:]
    # The main process reports, once.
    assert main["stderr"].count("left out 1 unreadable test image") == 1 and "left out" not in other["stderr"]
    knn = json.loads(evaluated.folder.knn.read_text())
    assert knn["num_test"] == 3 * TEST_PER_CLASS + 1 - 2 and knn["unreadable_images"] == 1
    cached = load_file(str(evaluated.folder.features / "backbone_test.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        run = EvaluationRun(evaluated.folder.path, [f"data.root={evaluated.images}"])
        single = extract_features(run.encoder.backbone.eval(), run.test_set, Accelerator(cpu=True))
    torch.testing.assert_close(cached["features"], single[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(cached["targets"], single[1])
