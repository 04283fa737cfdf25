from __future__ import annotations

import pytest
import timm
import torch

from ssl_toolkit.config import ConfigError, load_config
from ssl_toolkit.encoder_file import load_encoder, save_encoder
from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_backbone, create_encoder


def test_small_convnet_follows_timms_model_contract():
    assert "small_convnet" in timm.list_models()
    model = timm.create_model("small_convnet", in_chans=1, num_classes=10).eval()
    images = torch.randn(4, 1, 28, 28)
    features = model.forward_features(images)
    assert features.shape == (4, 512, 3, 3)  # 28 → 14 → 7 → 3 px
    pooled = model.forward_head(features, pre_logits=True)
    assert model.num_features == 512 and pooled.shape == (4, 512)
    torch.testing.assert_close(pooled, features.mean((2, 3)))
    torch.testing.assert_close(model(images), model.get_classifier()(pooled))
    model.reset_classifier(0)
    torch.testing.assert_close(model(images), pooled)


def test_backbone_args_reshape_the_architecture():
    narrow = create_backbone("small_convnet", in_chans=1, backbone_args={"widths": [8, 16], "depth": 2})
    assert narrow.num_features == 16 and narrow(torch.randn(2, 1, 28, 28)).shape == (2, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in narrow.modules()) == 4
    resnet = create_backbone("resnet18", in_chans=1, backbone_args={"layers": [1, 1, 1, 1]})
    assert sum(isinstance(m, torch.nn.Conv2d) for m in resnet.modules()) < 15  # resnet18 has 20
    with pytest.raises(ValueError, match=r"model\.backbone_args"):
        create_backbone("small_convnet", backbone_args={"width": 3})
    with pytest.raises(ValueError, match="pretrained"):
        create_backbone("small_convnet", pretrained=True)


def test_encoder_file_keeps_the_backbone_args(tmp_path):
    spec = EncoderSpec("small_convnet", in_chans=1, backbone_args={"widths": [8, 24]}, proj_dim=4)
    encoder = create_encoder(spec)
    preprocessing = {"image_size": 28, "channels": 1, "mean": [0.3], "std": [0.2]}
    save_encoder(
        encoder, tmp_path / "encoder.safetensors", spec=spec, kind="image", preprocessing=preprocessing
    )
    trained = load_encoder(tmp_path / "encoder.safetensors")
    assert trained.spec == spec and trained.feature_dim == 24 and trained.preprocessing == preprocessing
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(trained.embed(images), encoder.eval()(images)[0])


def test_backbone_args_come_from_recipes_and_overrides():
    config = load_config(None, ["model.backbone=small_convnet", "model.backbone_args={widths: [16, 32]}"])
    assert config.model.backbone_args == {"widths": [16, 32]}
    with pytest.raises(ConfigError, match=r"model\.backbone_args"):
        load_config(None, ["model.backbone_args=3"])


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet18"])
def test_the_head_takes_what_the_backbone_returns_also_past_a_pre_logits_layer(name):
    # MobileNetV3 pools 288 features and widens them to 1,024 before its classifier: h is the 1,024.
    encoder = create_encoder(EncoderSpec(name, proj_dim=8)).eval()
    h, z = encoder(torch.randn(2, 3, 64, 64))
    reference = timm.create_model(name, num_classes=0)
    assert encoder.feature_dim == h.shape[1] == reference.head_hidden_size and z.shape == (2, 8)
