"""Sequence encoders: shapes, padding that changes nothing, gradients reaching every field, clear errors."""

from __future__ import annotations

import pytest
import torch

from ssl_toolkit.kinds.sequences.encoders import (
    SEQUENCE_BACKBONES,
    SequenceEncoderSpec,
    create_sequence_encoder,
)
from ssl_toolkit.kinds.sequences.events import synthetic_events
from ssl_toolkit.kinds.sequences.views import pad_events

DATA = synthetic_events(12, 2, min_length=5, max_length=30, seed=0)
SMALL_ARGS = {
    "gru": {"hidden_size": 24},
    "cnn1d": {"channels": 24, "num_layers": 2, "kernel_size": 3},
    "transformer": {"d_model": 24, "num_layers": 1, "num_heads": 2, "max_length": 64},
}


def _encoder(backbone: str):
    torch.manual_seed(0)
    spec = SequenceEncoderSpec(
        backbone=backbone,
        categorical=DATA.categorical,
        numeric={"amount": [1.0, 0.5], "dt": [0.3, 0.2]},
        embedding_dim=4,
        backbone_args=SMALL_ARGS[backbone],
        proj_dim=8,
    )
    return create_sequence_encoder(spec).eval()


@pytest.mark.parametrize("backbone", list(SEQUENCE_BACKBONES))
def test_h_and_z_have_the_encoders_sizes(backbone):
    encoder = _encoder(backbone)
    h, z = encoder(pad_events([DATA[i][0] for i in range(5)]))
    assert h.shape == (5, 24) and z.shape == (5, 8) and encoder.feature_dim == 24


@pytest.mark.parametrize("backbone", list(SEQUENCE_BACKBONES))
def test_a_sequences_h_does_not_depend_on_the_padding_its_batch_needs(backbone):
    encoder = _encoder(backbone)
    order = DATA.lengths.argsort()
    short, long = DATA[int(order[0])][0], DATA[int(order[-1])][0]
    assert len(short["dt"]) < len(long["dt"])
    with torch.no_grad():
        alone = encoder.backbone(pad_events([short]))
        padded = encoder.backbone(pad_events([short, long]))[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", list(SEQUENCE_BACKBONES))
def test_every_field_gets_a_gradient(backbone):
    encoder = _encoder(backbone).train()
    batch = pad_events([DATA[i][0] for i in range(6)])
    batch.fields["amount"] = batch.fields["amount"].clone().requires_grad_()
    h, z = encoder(batch)
    (h.square().mean() + z.square().mean()).backward()
    assert batch.fields["amount"].grad.abs().sum() > 0
    assert encoder.backbone.embedder.embeddings["event_type"].weight.grad.abs().sum() > 0


def test_unknown_backbones_and_arguments_are_named():
    base = {"categorical": DATA.categorical, "numeric": {"amount": [0.0, 1.0]}}
    with pytest.raises(ValueError, match=r"unknown sequence backbone 'gur'.*did you mean gru"):
        create_sequence_encoder(SequenceEncoderSpec(backbone="gur", **base))
    with pytest.raises(ValueError, match=r"model.backbone_args=\{'hidden': 3\} do not fit gru"):
        create_sequence_encoder(SequenceEncoderSpec(backbone="gru", backbone_args={"hidden": 3}, **base))
    with pytest.raises(ValueError, match="at least one field"):
        create_sequence_encoder(SequenceEncoderSpec(backbone="gru", categorical={}, numeric={}))


def test_the_transformer_names_the_key_when_a_sequence_is_too_long():
    encoder = _encoder("transformer")
    longest = DATA[int(DATA.lengths.argmax())][0]
    encoder.backbone.max_length = len(longest["dt"]) - 1
    with pytest.raises(ValueError, match="max_length"):
        encoder(pad_events([longest]))


@pytest.mark.parametrize("backbone", list(SEQUENCE_BACKBONES))
def test_gradient_caching_over_chunks_of_padded_views_gives_the_whole_batchs_gradients(backbone):
    from ssl_toolkit.kinds.sequences.kind import collate_views
    from ssl_toolkit.kinds.sequences.views import SliceViews
    from ssl_toolkit.losses import create_loss, loss_over_views
    from ssl_toolkit.training.grad_cache import cached_backward

    encoder = _encoder(backbone).train()
    encoder.head.eval()  # BatchNorm in eval mode: chunks then normalise as the whole batch does
    slices = SliceViews(split_count=3, cnt_min=3, cnt_max=12)
    torch.manual_seed(1)
    views, _ = collate_views([(slices(DATA[i][0]), 0) for i in range(len(DATA))])
    loss = create_loss("coles", temperature=0.3)

    def embed(chunk):
        return list(encoder(torch.cat(chunk))[1].chunk(len(chunk)))

    plain = loss_over_views(loss, embed(views))
    plain.backward()
    expected = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    # Chunks of 5 rows of each of the 3 views of 12 clients: 5, 5, 2.
    cached, _ = cached_backward(embed, lambda z: loss_over_views(loss, z), views, chunk_size=5)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6)
    for parameter, grad in zip(encoder.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-4, atol=1e-6)


def test_the_grus_h_is_the_hidden_state_after_each_sequences_last_event():
    encoder = _encoder("gru")
    batch = pad_events([DATA[i][0] for i in range(8)])
    assert len(set(batch.lengths.tolist())) > 1
    with torch.no_grad():
        h = encoder.backbone(batch)
        # The same GRU run over each sequence alone, unpadded: its final hidden state.
        backbone = encoder.backbone
        alone = []
        for i in range(8):
            events = pad_events([DATA[i][0]])
            _, last = backbone.rnn(backbone.embedder(events))
            alone.append(last[-1, 0])
    torch.testing.assert_close(h, torch.stack(alone), atol=1e-5, rtol=1e-5)
