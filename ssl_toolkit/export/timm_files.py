"""The formats plain timm rebuilds: one timm .safetensors file, and a Hugging Face folder.

Both hold the backbone's state dict with timm's pretrained config (the run's input size, mean, std and
evaluation transform, as timm's data config describes them) and the model's keyword arguments, so that
`timm.create_model` builds the architecture by name and loads the weights. Each writer loads its export
back with timm and checks its features.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_toolkit.encoder_file import TrainedEncoder
from ssl_toolkit.export.verify import check_features, loading_back
from ssl_toolkit.files import write_safetensors

HF_CONFIG, HF_WEIGHTS, HF_CARD = "config.json", "model.safetensors", "README.md"
# What ssl_toolkit's evaluation transform does (resize the short side to image_size, centre-crop to it), as
# timm's data config describes it.
EVALUATION_TRANSFORM = {"crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")


# -- what timm needs to rebuild the backbone -----------------------------------------------------------------
def timm_model_args(trained: TrainedEncoder) -> dict:
    """The keyword arguments of `timm.create_model` that rebuild the backbone (in_chans, backbone_args).

    An architecture of one input size (a ViT) was built for the img_size its registry entry names unless
    backbone_args gave one; a rebuild would take it from the export's input size instead, so it is explicit.
    """
    arguments = {"in_chans": trained.spec.in_chans, **trained.spec.backbone_args}
    registry = _registry_cfg(trained.spec.backbone)
    if registry.get("fixed_input_size") and "img_size" not in arguments and registry.get("input_size"):
        arguments["img_size"] = list(registry["input_size"][1:])
    return arguments


def timm_pretrained_cfg(trained: TrainedEncoder) -> dict:
    """timm's pretrained config of the exported weights: the run's preprocessing as timm's data config."""
    spec, preprocessing = trained.spec, trained.preprocessing
    registry = _registry_cfg(spec.backbone)
    size = preprocessing.get("image_size")
    # A file from before preprocessing was stored: the architecture's own size is the best guess.
    height, width = (size, size) if size else tuple(registry.get("input_size", (3, 224, 224))[1:])
    # Whether the model takes one input size only (a ViT but one built with dynamic_img_size).
    fixed = bool(registry.get("fixed_input_size", False)) and not spec.backbone_args.get("dynamic_img_size")
    cfg = {
        "architecture": spec.backbone,
        "input_size": [spec.in_chans, height, width],
        "fixed_input_size": fixed,
        **EVALUATION_TRANSFORM,
        "num_classes": 0,
        "num_features": trained.feature_dim,
    }
    if preprocessing.get("mean") is not None:
        cfg.update(mean=list(preprocessing["mean"]), std=list(preprocessing["std"]))
    for key in ("first_conv", "classifier"):  # where timm adapts input channels and drops the classifier
        if registry.get(key) is not None:
            cfg[key] = registry[key]
    return cfg


def timm_create_kwargs(pretrained_cfg: dict, model_args: dict, file: str) -> dict:
    """The keyword arguments, besides the name, of the create_model call that loads a timm export.

    Args:
        pretrained_cfg: the export's `timm_pretrained_cfg`.
        model_args: the export's `timm_model_args`.
        file: the path of the .safetensors file.

    Returns:
        pretrained=True, num_classes=0, the model's arguments (in_chans only when it is not timm's 3), and a
        `pretrained_cfg_overlay` of the file and the data config.
    """
    kwargs: dict = {"pretrained": True, "num_classes": 0}
    kwargs.update({k: v for k, v in model_args.items() if not (k == "in_chans" and v == 3)})
    overlay = {"file": file}
    overlay.update({key: _as_tuple(pretrained_cfg[key]) for key in DATA_CONFIG_KEYS if key in pretrained_cfg})
    kwargs["pretrained_cfg_overlay"] = overlay
    return kwargs


def _registry_cfg(name: str) -> dict:
    """timm's own pretrained config of architecture `name` (its default weights'), {} when it has none."""
    import timm

    registry = timm.models.get_pretrained_cfg(name)
    return registry.to_dict() if registry is not None else {}


def _as_tuple(value: object) -> object:
    """`value` as a tuple where it is a list: JSON keeps tuples as lists, timm's data config wants tuples."""
    return tuple(value) if isinstance(value, list) else value


# -- writers: each writes `path` (a temporary name) and checks what it wrote ---------------------------------
def write_timm(trained: TrainedEncoder, path: Path) -> None:
    """Write the backbone to the .safetensors file `path`, its metadata holding timm's config and arguments.

    Args:
        trained: the encoder whose backbone is exported.
        path: the file to write (a temporary name).

    Raises:
        ConfigError: timm cannot load the file back, or its features are not the encoder's.
    """
    import timm

    cfg, model_args = timm_pretrained_cfg(trained), timm_model_args(trained)
    metadata = {
        "format": "pt",  # what the Hugging Face loaders expect of a PyTorch safetensors file
        "pretrained_cfg": json.dumps(cfg),
        "model_args": json.dumps(model_args),
        "features": json.dumps("backbone"),
    }
    write_safetensors(_backbone_state(trained), path, metadata)
    # The check loads the file under its temporary name as the printed line will under its own.
    with loading_back("timm"):
        model = timm.create_model(cfg["architecture"], **timm_create_kwargs(cfg, model_args, str(path)))
    check_features(trained, model.eval(), "timm")


def write_hf(trained: TrainedEncoder, path: Path) -> None:
    """Write the backbone as the folder `path`: config.json, model.safetensors and a README.md model card.

    Args:
        trained: the encoder whose backbone is exported.
        path: the folder to create (a temporary name).

    Raises:
        ConfigError: timm cannot load the folder back, or its features are not the encoder's.
    """
    import timm

    cfg, model_args = timm_pretrained_cfg(trained), timm_model_args(trained)
    path.mkdir()
    pretrained_cfg = {key: value for key, value in cfg.items() if key not in ("architecture", "num_features")}
    config = {
        "architecture": cfg["architecture"],
        "num_classes": 0,
        "num_features": cfg["num_features"],
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    (path / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(_backbone_state(trained), path / HF_WEIGHTS, {"format": "pt"})
    (path / HF_CARD).write_text(_model_card(trained, cfg))
    with loading_back("hf"):
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    check_features(trained, model.eval(), "hf")


def _backbone_state(trained: TrainedEncoder) -> dict[str, torch.Tensor]:
    """The backbone's state dict on the CPU, each tensor its own contiguous copy.

    Tensors that share storage (tied weights) are cloned, as safetensors stores each tensor on its own.
    """
    return {
        key: value.detach().cpu().clone().contiguous() for key, value in trained.backbone.state_dict().items()
    }


def _model_card(trained: TrainedEncoder, cfg: dict) -> str:
    """A short model card in the layout the Hugging Face Hub reads (YAML front matter, then Markdown)."""
    data = trained.metadata.get("data") or {}
    dataset = f" on {data['name']}" if data.get("name") else ""
    step = f" for {trained.metadata['step']} steps" if trained.metadata.get("step") else ""
    channels, height, width = cfg["input_size"]
    mean, std = cfg.get("mean"), cfg.get("std")
    normalisation = f", normalised with mean {mean} and std {std}" if mean is not None else ""
    arguments = trained.spec.backbone_args
    built = f" built with {json.dumps(arguments)} (config.json's model_args)" if arguments else ""
    return f"""---
library_name: timm
tags:
- image-feature-extraction
- timm
- self-supervised
---
# {cfg["architecture"]}, self-supervised

A `{cfg["architecture"]}` backbone{built} pretrained with ssl-toolkit{dataset}{step}. It returns the pooled
pre-projection features h ({cfg["num_features"]} dimensions) of images of {channels} channel(s),
{height}×{width} px{normalisation}; there is no classifier and no projection head.

```python
import timm

model = timm.create_model("hf-hub:USER/REPO", pretrained=True).eval()  # or "local-dir:PATH" for this folder
config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**config, is_training=False)
features = model(transform(image).unsqueeze(0))  # (1, {cfg["num_features"]})
```
"""
