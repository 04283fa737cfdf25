"""The files evaluation reads and writes: a corrupt encoder or feature cache, strict JSON, file modes."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

import ssl_toolkit.eval.knn as knn_protocol
import ssl_toolkit.eval.metrics as metrics
from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.encoder_file import save_encoder
from ssl_toolkit.eval.features import FeatureCache
from ssl_toolkit.eval.run import EvaluationRun
from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
from ssl_toolkit.run_dir import RunDirectory


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"\x00\x01 not a safetensors file")


def _wrong_tensors(path):
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"encoder_spec": "{}"})


@pytest.mark.parametrize("damage", [_truncate, _garbage, _wrong_tensors])
@pytest.mark.parametrize("command", [["probe"], ["knn"], ["plot", "--max-points", "20"]])
def test_a_corrupt_encoder_file_is_one_line_naming_it_and_exit_2(tiny_run, capsys, damage, command):
    encoder = RunDirectory(tiny_run).encoder
    damage(encoder)
    assert cli_main([command[0], str(tiny_run), *command[1:]]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(encoder) in lines[0] and "pretrain" in lines[0] and "Traceback" not in captured.err


def test_a_corrupt_cached_feature_file_is_named_once_and_recomputed(tiny_run, capsys):
    first = EvaluationRun(tiny_run).features("backbone", "test")
    cached = RunDirectory(tiny_run).features / "backbone_test.safetensors"
    _truncate(cached)
    capsys.readouterr()
    again = EvaluationRun(tiny_run).features("backbone", "test")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(cached) in lines[0] and "recomput" in lines[0]
    torch.testing.assert_close(again[0], first[0])
    assert torch.equal(load_file(str(cached))["targets"], first[1])  # written again, whole


def test_the_cache_reports_a_corrupt_entry_through_its_reporter(tmp_path):
    reported = []
    cache = FeatureCache(tmp_path, report=reported.append)
    key = {"kind": "backbone"}
    cache.save("backbone_test", key, torch.zeros(2, 3), torch.arange(2))
    assert (
        cache.load("backbone_test", {"kind": "projection"}) is None and reported == []
    )  # stale, not corrupt
    cache.path("backbone_test").write_bytes(b"truncated")
    assert cache.load("backbone_test", key) is None
    assert len(reported) == 1 and str(cache.path("backbone_test")) in reported[0]


def _reject_constant(name: str):
    raise ValueError(f"bare {name} in JSON")


def test_a_nan_probe_metric_is_written_as_null(tiny_run, monkeypatch):
    from ssl_toolkit.eval.probe import run_probe

    monkeypatch.setattr(metrics, "macro_auroc", lambda probabilities, targets: float("nan"))
    run_probe(tiny_run, weight_decay=1e-4)  # one fit: the test is about the file, not the decay
    written = json.loads(RunDirectory(tiny_run).probe.read_text(), parse_constant=_reject_constant)
    assert written["auroc"] is None and 0 < written["top1"] <= 1


def test_a_nan_knn_metric_is_written_as_null(tiny_run, monkeypatch):
    monkeypatch.setattr(knn_protocol, "top_k_accuracy", lambda scores, targets, k: float("nan"))
    knn_protocol.run_knn(tiny_run, k=5)
    written = json.loads(RunDirectory(tiny_run).knn.read_text(), parse_constant=_reject_constant)
    assert written["top1"] is None and written["top5"] is None and written["k"] == 5
    assert not list(tiny_run.glob(".tmp_*"))


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_encoder_file_follows_the_umask(tmp_path, umask):
    spec = EncoderSpec(backbone="test_resnet", in_chans=1, proj_dim=4)
    path = tmp_path / "encoder.safetensors"
    save_encoder(create_encoder(spec), path, spec=spec, kind="image", preprocessing={})
    plain = tmp_path / "plain.txt"
    plain.write_text("a file made the ordinary way")
    assert _mode(path) == _mode(plain) == 0o666 & ~umask
    assert not list(tmp_path.glob("*.tmp"))


def test_cached_features_follow_the_umask(tmp_path, umask):
    path = FeatureCache(tmp_path).save("backbone_train", {}, torch.zeros(2, 3), torch.arange(2))
    assert _mode(path) == 0o666 & ~umask
