"""Gradient caching gives the parameter gradients of the plain large-batch step, chunk by chunk."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from losses.process_group import run_in_process_group
from pretraining_runs import logged_losses, pretrain_tiny, tiny_config
from safetensors.torch import load_file
from torch import nn

from ssl_toolkit.config import LossSection
from ssl_toolkit.losses import NTXentLoss, SigmoidLoss, SupConLoss
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training import grad_cache, run_log
from ssl_toolkit.training import objective as objective_module
from ssl_toolkit.training.grad_cache import cached_backward
from ssl_toolkit.training.objective import ContrastiveObjective

BATCH = 12
DIM = 6
SEED = 7
CLASSES = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 1, 2, 3])


def _model(dropout: float = 0.3, batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(16)] if batchnorm else []
    return nn.Sequential(nn.Linear(DIM, 16), *norm, nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 8))


def _views(n_views: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, DIM, generator=generator) for _ in range(n_views)]


def _embed(model: nn.Module):
    def embed(chunk: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(model(torch.cat(chunk)).chunk(len(chunk)))  # a chunk's views share a forward

    return embed


# name → (views, loss module, loss of the per-view embeddings)
def _case(name: str):
    if name == "ntxent":
        loss = NTXentLoss(temperature=0.3)
        return 2, loss, lambda embeddings: loss(*embeddings)
    if name == "supcon":  # three views, class labels: positives beyond the views of one sample
        loss = SupConLoss(temperature=0.3)
        return 3, loss, lambda embeddings: loss(torch.cat(embeddings), CLASSES.repeat(len(embeddings)))
    loss = SigmoidLoss()  # learnable t and b
    sample_ids = torch.arange(BATCH)
    return 2, loss, lambda embeddings: loss(torch.cat(embeddings), sample_ids.repeat(len(embeddings)))


def _grads(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for module in modules for p in module.parameters()]


def _plain_step(model, loss_module, loss_of, views, chunk_size):
    """The large-batch loss and backward with one graph over the whole batch.

    The batch is embedded in the cached step's chunks, in its order, so that dropout draws the same masks;
    with chunk_size = BATCH it is the usual single forward.
    """
    torch.manual_seed(SEED)
    embed = _embed(model)
    pieces = [embed([v[start : start + chunk_size] for v in views]) for start in range(0, BATCH, chunk_size)]
    embeddings = [torch.cat(outputs) for outputs in zip(*pieces, strict=True)]
    loss = loss_of(embeddings)
    loss.backward()
    return loss.detach(), _grads(model, loss_module), torch.rand(3), [e.detach() for e in embeddings]


def _cached_step(model, loss_module, loss_of, views, chunk_size, **kwargs):
    torch.manual_seed(SEED)
    loss, embeddings = cached_backward(
        _embed(model), loss_of, views, chunk_size, loss_parameters=loss_module.parameters(), **kwargs
    )
    return loss, _grads(model, loss_module), torch.rand(3), embeddings


@pytest.mark.parametrize("chunk_size", [4, 5])  # 5: a smaller last chunk
@pytest.mark.parametrize("name", ["ntxent", "supcon", "sigmoid"])
def test_cached_gradients_equal_the_plain_step_with_dropout(name, chunk_size):
    n_views, loss_module, loss_of = _case(name)
    views = _views(n_views)
    model = _model(dropout=0.3)
    plain_loss, plain_grads, plain_next, plain_embeddings = _plain_step(
        model, loss_module, loss_of, views, chunk_size
    )
    model.zero_grad(), loss_module.zero_grad()
    loss, grads, following, embeddings = _cached_step(model, loss_module, loss_of, views, chunk_size)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert not loss.requires_grad
    assert len(grads) == len(plain_grads) == 4 + len(list(loss_module.parameters()))
    for grad, plain in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(grad, plain, rtol=1e-5, atol=1e-5)
    # The caller's random stream goes on as after the plain step: pass 2 replays, it does not draw anew.
    torch.testing.assert_close(following, plain_next, rtol=0, atol=0)
    # The step's embeddings are the whole batch's (every chunk), as the plain step has them.
    assert [e.shape for e in embeddings] == [(BATCH, 8)] * n_views
    for embedding, plain in zip(embeddings, plain_embeddings, strict=True):
        assert not embedding.requires_grad
        torch.testing.assert_close(embedding, plain, rtol=1e-6, atol=1e-6)


def test_without_the_random_state_replay_dropout_gradients_differ(monkeypatch):
    # Guards the test above: its dropout must matter, so that a broken replay makes it fail.
    n_views, loss_module, loss_of = _case("ntxent")
    views = _views(n_views)
    model = _model(dropout=0.3)
    _, plain_grads, _, _ = _plain_step(model, loss_module, loss_of, views, 4)
    model.zero_grad()
    monkeypatch.setattr(grad_cache, "_set_rng_state", lambda state, devices: None)
    _, grads, _, _ = _cached_step(model, loss_module, loss_of, views, 4)
    assert not all(
        torch.allclose(g, p, rtol=1e-5, atol=1e-5) for g, p in zip(grads, plain_grads, strict=True)
    )


@pytest.mark.parametrize("name", ["ntxent", "sigmoid"])
def test_without_dropout_equals_one_forward_of_the_whole_batch(name):
    n_views, loss_module, loss_of = _case(name)
    views = _views(n_views)
    model = _model(dropout=0.0)
    plain_loss, plain_grads, _, _ = _plain_step(model, loss_module, loss_of, views, BATCH)
    model.zero_grad(), loss_module.zero_grad()
    loss, grads, _, _ = _cached_step(model, loss_module, loss_of, views, 3)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for grad, plain in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(grad, plain, rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_are_per_chunk_and_updated_once_per_chunk():
    n_views, loss_module, loss_of = _case("ntxent")
    views = _views(n_views)
    reference = _model(dropout=0.0, batchnorm=True)
    _, plain_grads, _, _ = _plain_step(reference, loss_module, loss_of, views, 4)
    model = _model(dropout=0.0, batchnorm=True)
    _, grads, _, _ = _cached_step(model, loss_module, loss_of, views, 4, buffers=model.buffers())
    for grad, plain in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(grad, plain, rtol=1e-5, atol=1e-5)
    for buffer, plain in zip(model.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buffer, plain, rtol=1e-6, atol=1e-7)
    assert model[1].num_batches_tracked.item() == 3


def test_every_backward_but_the_last_runs_without_gradient_sync():
    n_views, _, loss_of = _case("ntxent")
    model = _model()
    in_no_sync, synced = [False], []

    @contextmanager
    def no_sync():
        in_no_sync[0] = True
        yield
        in_no_sync[0] = False

    def backward(surrogate: torch.Tensor) -> None:
        synced.append(not in_no_sync[0])
        surrogate.backward()

    cached_backward(_embed(model), loss_of, _views(n_views), 5, backward=backward, no_sync=no_sync)
    assert synced == [False, False, True]


def test_chunk_size_must_be_positive():
    n_views, _, loss_of = _case("ntxent")
    with pytest.raises(ValueError, match="chunk_size"):
        cached_backward(_embed(_model()), loss_of, _views(n_views), 0)


class _TinyEncoder(nn.Module):
    """(h, z) like models.Encoder, on vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh())
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.head(h)


def _ddp_plain_and_cached(rank: int, world_size: int) -> dict:
    """Parameter gradients after DDP's reduction, plain and cached, for each loss, on this process."""
    from torch.nn.parallel import DistributedDataParallel

    views = [v[rank * BATCH // world_size : (rank + 1) * BATCH // world_size] for v in _views(2)]
    results = {}
    for loss_module in (NTXentLoss(temperature=0.3), SigmoidLoss()):
        torch.manual_seed(0)
        objective = DistributedDataParallel(ContrastiveObjective(_TinyEncoder(), loss_module))
        objective(views)[0].backward()
        plain = [p.grad.clone() for p in objective.parameters()]

        def embed(chunk: list[torch.Tensor], objective=objective) -> list[torch.Tensor]:
            return objective(chunk, mode="embed")  # through DDP's forward, as pretraining does

        for _ in range(2):  # a second step fails if DDP did not finish reducing the first
            objective.zero_grad()
            cached_backward(
                embed,
                objective.module.loss_of,
                views,
                2,
                loss_parameters=objective.module.loss.parameters(),
                no_sync=objective.no_sync,
            )
        results[type(loss_module).__name__] = plain, [p.grad.clone() for p in objective.parameters()]
    return results


@pytest.mark.slow
def test_two_processes_under_ddp_reduce_the_cached_gradients_like_the_plain_ones():
    for results in run_in_process_group(_ddp_plain_and_cached, 2):
        for plain, cached in results.values():
            for grad, expected in zip(cached, plain, strict=True):
                torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def _run(tmp_path, name, *overrides, loss=None):
    config = tiny_config(tmp_path, name, *overrides)
    if loss is not None:
        config.loss = LossSection(loss)  # the recipe's temperature is not an argument of every loss
    return pretrain_tiny(tmp_path, config=config)


@pytest.mark.parametrize("loss", [None, "sigmoid"])
def test_pretraining_with_one_chunk_trains_like_the_plain_step(tmp_path, monkeypatch, loss):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])
        return cached_backward(*args, **kwargs)

    plain = _run(tmp_path, "plain", loss=loss)
    monkeypatch.setattr(objective_module, "cached_backward", spy)
    cached = _run(tmp_path, "cached", "train.grad_cache_chunk=32", loss=loss)  # the whole batch of 32
    assert calls == [32, 32]  # both steps took the cached path
    torch.testing.assert_close(logged_losses(cached), logged_losses(plain), rtol=1e-6, atol=1e-6)
    # The full state: encoder weights, BatchNorm statistics, the loss's own parameters.
    expected = load_file(str(RunDirectory(plain).checkpoint_dirs()[-1] / "model.safetensors"))
    found = load_file(str(RunDirectory(cached).checkpoint_dirs()[-1] / "model.safetensors"))
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_pretraining_chunks_multi_crop_views_and_logs_whole_batch_statistics(tmp_path, monkeypatch):
    rows = []
    real = run_log.view_pair_metrics
    monkeypatch.setattr(
        run_log, "view_pair_metrics", lambda a, b: rows.append((len(a), len(b))) or real(a, b)
    )
    run_dir = _run(
        tmp_path,
        "multicrop",
        "loss.name=supcon",
        "augment.n_views=3",
        "augment.small_crops=2",
        "augment.small_size=6",
        "train.grad_cache_chunk=12",  # chunks of 12, 12 and 8 images
    )
    losses = logged_losses(run_dir)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert rows == [(32, 32), (32, 32)]  # every chunk's embeddings, not the last chunk's 8


def test_a_negative_chunk_is_a_config_error(tmp_path):
    from ssl_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.grad_cache_chunk"):
        tiny_config(tmp_path, "bad", "train.grad_cache_chunk=-1")
