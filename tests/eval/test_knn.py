from __future__ import annotations

import json
import math

import pytest
import torch

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.eval.knn import knn_scores, knn_top1, run_knn
from ssl_toolkit.eval.run import EvaluationRun
from ssl_toolkit.run_dir import RunDirectory


def test_scores_match_a_loop_over_neighbours():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(30, 4, generator=generator), torch.randn(5, 4, generator=generator)
    labels = torch.randint(0, 3, (30,), generator=generator)
    scores = knn_scores(train, labels, test, 3, k=7, temperature=0.1, chunk_size=2)
    for row, query in enumerate(test):
        similarity = [
            (float(query @ t / (query.norm() * t.norm())), int(y)) for t, y in zip(train, labels, strict=True)
        ]
        expected = [0.0, 0.0, 0.0]
        for s, y in sorted(similarity, reverse=True)[:7]:
            expected[y] += math.exp(s / 0.1)
        assert scores[row].tolist() == pytest.approx(expected, rel=1e-4)


def test_recovers_separable_classes():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=generator) * 4
    train_y = torch.arange(5).repeat_interleave(40)
    test_y = torch.arange(5).repeat_interleave(10)
    train_x = centres[train_y] + torch.randn(200, 16, generator=generator)
    test_x = centres[test_y] + torch.randn(50, 16, generator=generator)
    assert knn_top1(train_x, train_y, test_x, test_y, 5) > 0.95
    shuffled = train_y[torch.randperm(200, generator=generator)]
    assert knn_top1(train_x, shuffled, test_x, test_y, 5, k=20) < 0.5


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="k must"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 2, k=0)


def test_knn_command_writes_knn_json(tiny_run, capsys):
    assert cli_main(["knn", str(tiny_run), "--k", "20"]) == 0
    assert "top-1" in capsys.readouterr().out
    written = json.loads(RunDirectory(tiny_run).knn.read_text())
    assert {
        "top1",
        "top5",
        "k",
        "temperature",
        "num_train",
        "num_test",
        "feature_dim",
        "features",
    } <= written.keys()
    assert written["k"] == 20 and written["num_train"] == 1347 and written["num_test"] == 450
    run = EvaluationRun(tiny_run)
    (train_x, train_y), (test_x, test_y) = run.features("backbone", "train"), run.features("backbone", "test")
    assert written["top1"] == pytest.approx(knn_top1(train_x, train_y, test_x, test_y, 10, k=20))
    assert written["top1"] > 0.5  # digits: far above chance even after 2 steps


def test_knn_defaults_are_instdisc_and_bad_arguments_are_named(tiny_run):
    assert (
        run_knn(tiny_run)["k"] == 200
        and json.loads(RunDirectory(tiny_run).knn.read_text())["temperature"] == 0.07
    )
    from ssl_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="--k"):
        run_knn(tiny_run, k=0)


def test_evaluate_runs_probe_and_knn_on_features_embedded_once(tiny_run, capsys, monkeypatch):
    import ssl_toolkit.eval.run as evaluation_run
    from ssl_toolkit.eval.probe import run_probe

    embedded = []
    extract = evaluation_run.extract_features_and_readable
    monkeypatch.setattr(
        evaluation_run,
        "extract_features_and_readable",
        lambda *args, **kwargs: embedded.append(1) or extract(*args, **kwargs),
    )
    assert cli_main(["evaluate", str(tiny_run), "--weight-decay", "1e-4"]) == 0
    printed = capsys.readouterr().out
    assert "linear probe (L-BFGS, frozen features) on" in printed and "kNN on" in printed
    assert len(embedded) == 2  # train and test, once each for both evaluations
    run = RunDirectory(tiny_run)
    probe, knn = json.loads(run.probe.read_text()), json.loads(run.knn.read_text())
    assert probe["weight_decay"] == 1e-4 and knn["k"] == 200
    # The same figures as the two commands on their own.
    assert knn["top1"] == run_knn(tiny_run)["top1"]
    assert probe["top1"] == run_probe(tiny_run, weight_decay=1e-4)["top1"]
    run.probe.unlink()
    assert cli_main(["evaluate", str(tiny_run), "--evaluations", "knn"]) == 0
    assert not run.probe.exists()
