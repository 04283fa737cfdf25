from __future__ import annotations

import torch

from ssl_toolkit.cli import main as cli_main
from ssl_toolkit.eval.maps import stratified_subset, tsne_map


def test_stratified_subset_keeps_class_proportions():
    targets = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    chosen = stratified_subset(targets, 100, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 100
    assert torch.bincount(targets[chosen]).tolist() == [60, 30, 10]
    assert torch.equal(stratified_subset(targets, 5000), torch.arange(1000))


def test_tsne_keeps_separable_classes_apart():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 64, generator=generator) * 10
    targets = torch.arange(3).repeat_interleave(40)
    points = torch.from_numpy(tsne_map(centres[targets] + torch.randn(120, 64, generator=generator)))
    distances = torch.cdist(points, points)
    same = targets[:, None] == targets[None, :]
    assert distances[same].mean() * 3 < distances[~same].mean()


def test_plot_command_writes_a_png(tiny_run, capsys):
    assert cli_main(["plot", str(tiny_run), "--max-points", "150"]) == 0
    path = tiny_run / "tsne_backbone.png"
    assert str(path) in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
