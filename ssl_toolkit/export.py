"""Export a run's backbone for use without ssl_toolkit: plain timm, a Hugging Face folder, ONNX, TorchScript.

An export carries the backbone f only, `x → h`: the pooled pre-projection features that downstream work
(probes, retrieval, fine-tuning) uses. The projection head g served the contrastive loss and stays behind.

Formats:
  timm         one safetensors file of the backbone's state dict, which plain timm loads with
               `timm.create_model(NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
               file=...))`; its metadata holds the timm pretrained config (input size, mean, std, ...)
               and the model's arguments, and `loading_code` gives the exact create_model line.
  hf           a folder with config.json and model.safetensors as timm reads it from the Hugging Face Hub or
               from disk (`timm.create_model("local-dir:PATH", pretrained=True)`), with a README.md model
               card: pushing the folder to the Hub is the only step left.
  onnx         an ONNX graph with input `images` (N, C, H, W) and output `features` (N, F), batch dynamic.
  torchscript  a traced module for `torch.jit.load`.

The timm and hf formats need an architecture that plain timm rebuilds from its name and keyword arguments:
not `small_convnet` (registered with timm only when ssl_toolkit is imported) and not `model.cifar_stem=true`
(ssl_toolkit swaps the stem after timm builds the model). ONNX and TorchScript carry the graph itself, so
they take any image backbone. Event-sequence encoders take a batch of padded fields with their lengths,
which none of these formats carries; they stay with `ssl_toolkit.encoder_file.load_encoder`.

Each export is checked before it takes its name: the file is read back the way its users will read it
(timm, onnxruntime, torch.jit.load) and must give the encoder's h on a random batch. It is written under a
temporary name beside `out` and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import EncoderFileError, TrainedEncoder, load_encoder
from ssl_toolkit.files import replaced_atomically, write_safetensors
from ssl_toolkit.run_dir import RunDirectory

FORMATS = ("timm", "hf", "onnx", "torchscript")
TIMM_FORMATS = ("timm", "hf")  # rebuilt by plain timm from the architecture's name and arguments
GRAPH_FORMATS = ("onnx", "torchscript")  # the graph travels with the weights
TOLERANCE = 1e-4  # largest |h_export - h| accepted on the check batch, relative to h's scale when it is > 1
INSTALL_EXPORT = "pip install 'ssl-toolkit[export]'"
HF_CONFIG, HF_WEIGHTS, HF_CARD = "config.json", "model.safetensors", "README.md"
# What ssl_toolkit's evaluation transform does (resize the short side to image_size, centre-crop to it), as
# timm's data config describes it.
EVALUATION_TRANSFORM = {"crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")


def export_encoder(run_dir: str | Path, format: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the backbone of the run in `run_dir` to `out` in `format`, checked, and return `out`.

    Args:
        run_dir: a finished run directory (it holds encoder.safetensors).
        format: one of `FORMATS`: "timm", "hf", "onnx" or "torchscript".
        out: the file (a folder for "hf") to write; the timm format's name ends in .safetensors.
        overwrite: replace what is at `out` already (without it, an existing `out` is refused).

    Returns:
        `out`, as a Path. `loading_code(out, format)` says how to load it.

    Raises:
        ConfigError: an unknown format, a missing run or encoder file, an `out` that exists, a backbone the
            format cannot carry (the message names the formats that can), onnx not installed, or an export
            whose check gave other features than the encoder's.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r} (--format); valid: {', '.join(FORMATS)}")
    trained = read_run_encoder(run_dir)
    refusal = unsupported_reason(trained, format)
    if refusal is not None:
        raise ConfigError(refusal)
    out = Path(out)
    if format == "timm" and out.suffix != ".safetensors":
        # timm reads a `file` as safetensors by its suffix and as a pickle otherwise.
        raise ConfigError(
            f"--out {out}: a timm weight file must end in .safetensors (e.g. {out}.safetensors)"
        )
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"--out {out} exists already; pick another path or add --overwrite to replace it")
    if format == "onnx":
        _require_onnx()
    writer = WRITERS[format]
    with replaced_atomically(out) as partial:
        writer(trained, partial)
    return out


def read_run_encoder(run_dir: str | Path) -> TrainedEncoder:
    """The trained encoder of the run in `run_dir`; a missing or unreadable one is a ConfigError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no run directory at {run_dir}; give the folder a pretraining run wrote")
    path = RunDirectory(run_dir).encoder
    try:
        return load_encoder(path)
    except FileNotFoundError:
        raise ConfigError(
            f"no encoder at {path}; a finished pretraining run writes it (rerun the run's "
            "`ssl-toolkit pretrain` command with train.resume=auto to finish it)"
        ) from None
    except EncoderFileError as error:
        raise ConfigError(str(error)) from None


def supported_formats(trained: TrainedEncoder) -> list[str]:
    """The formats `trained` exports to (possibly none)."""
    return [name for name in FORMATS if unsupported_reason(trained, name) is None]


def unsupported_reason(trained: TrainedEncoder, format: str) -> str | None:
    """Why `format` cannot carry `trained`, naming the formats that can; None when it can."""
    if trained.kind != "image":
        return (
            f"--format {format}: this is an encoder of {trained.kind} data ({trained.spec.backbone}), whose "
            "input is a batch of padded fields with their lengths; no export format carries it. Load it "
            "with ssl_toolkit.encoder_file.load_encoder(RUN_DIR/encoder.safetensors) and use .embed"
        )
    if format in TIMM_FORMATS:
        problem = _not_plain_timm(trained.spec)
        if problem is not None:
            return (
                f"--format {format}: {problem}, so plain timm cannot rebuild it; export it with "
                f"--format {' or --format '.join(GRAPH_FORMATS)}, which carry the graph"
            )
    return None


def _not_plain_timm(spec) -> str | None:
    """What keeps plain timm from building `spec`'s backbone by name and keyword arguments, or None."""
    import timm

    if not timm.is_model(spec.backbone):
        return f"model.backbone={spec.backbone} is not a timm architecture"
    module = timm.models.model_entrypoint(spec.backbone).__module__
    if not module.startswith("timm."):  # registered by a package that plain timm does not import
        return f"model.backbone={spec.backbone} is registered with timm by {module.split('.')[0]}, not timm"
    if spec.cifar_stem:
        return "model.cifar_stem=true replaces timm's stem after timm builds the model"
    return None


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


def _registry_cfg(name: str) -> dict:
    """timm's own pretrained config of architecture `name` (its default weights'), {} when it has none."""
    import timm

    registry = timm.models.get_pretrained_cfg(name)
    return registry.to_dict() if registry is not None else {}


def _timm_create_kwargs(pretrained_cfg: dict, model_args: dict, file: str) -> dict:
    """The keyword arguments, besides the name, of the create_model call that loads a timm export."""
    kwargs: dict = {"pretrained": True, "num_classes": 0}
    kwargs.update({k: v for k, v in model_args.items() if not (k == "in_chans" and v == 3)})
    overlay = {"file": file}
    overlay.update({key: _as_tuple(pretrained_cfg[key]) for key in DATA_CONFIG_KEYS if key in pretrained_cfg})
    kwargs["pretrained_cfg_overlay"] = overlay
    return kwargs


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _python_call(function: str, first: str | None, kwargs: dict) -> str:
    """`function(first, key=value, ...)` as Python source, dicts written as dict(...)."""

    def source(value) -> str:
        if isinstance(value, dict) and all(str(key).isidentifier() for key in value):
            return "dict(" + ", ".join(f"{key}={source(item)}" for key, item in value.items()) + ")"
        return repr(value)

    parts = [repr(first)] if first is not None else []
    for key, value in kwargs.items():
        parts.append(f"{key}={source(value)}" if key.isidentifier() else f"**{{{key!r}: {source(value)}}}")
    return f"{function}({', '.join(parts)})"


def loading_code(path: str | Path, format: str) -> str:
    """A line of Python that loads the export at `path` without ssl_toolkit (absolute path).

    For the timm format it is the exact `timm.create_model(...)` call, read from the file's metadata, whose
    `pretrained_cfg_overlay` makes `timm.data.resolve_model_data_config(model)` give the run's
    preprocessing.
    """
    path = Path(path).absolute()
    if format == "timm":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        cfg, model_args = json.loads(metadata["pretrained_cfg"]), json.loads(metadata["model_args"])
        kwargs = _timm_create_kwargs(cfg, model_args, str(path))
        return _python_call("timm.create_model", cfg["architecture"], kwargs)
    if format == "hf":
        return _python_call("timm.create_model", f"local-dir:{path}", {"pretrained": True})
    if format == "onnx":
        return (
            f'onnxruntime.InferenceSession({str(path)!r}).run(["features"], {{"images": images}})[0]'
            "  # images: float32 (N, C, H, W)"
        )
    if format == "torchscript":
        return f"torch.jit.load({str(path)!r})(images)  # images: float32 (N, C, H, W)"
    raise ConfigError(f"unknown export format {format!r} (--format); valid: {', '.join(FORMATS)}")


# -- writers: each writes `path` (a temporary name) and checks what it wrote ---------------------------------
def _write_timm(trained: TrainedEncoder, path: Path) -> None:
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
    with _loading_back("timm"):
        model = timm.create_model(cfg["architecture"], **_timm_create_kwargs(cfg, model_args, str(path)))
    _check_features(trained, model.eval(), "timm")


def _write_hf(trained: TrainedEncoder, path: Path) -> None:
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
    with _loading_back("hf"):
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    _check_features(trained, model.eval(), "hf")


def _write_onnx(trained: TrainedEncoder, path: Path) -> None:
    import onnxruntime

    with _exporting(trained, "onnx"):
        _export_onnx(_eval_copy(trained), _check_batch(trained, 2), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda images: torch.from_numpy(session.run(["features"], {"images": images.numpy()})[0])  # noqa: E731
    _check_features(trained, run, "onnx")


def _export_onnx(backbone: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx.export with a dynamic batch by torch.export, or by the TorchScript exporter if that fails.

    The weights go inside the one file (external_data=False), as a file of under 2 GB can hold them.
    """
    names = {"input_names": ["images"], "output_names": ["features"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' progress and deprecation notes are not the user's
        try:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                backbone,
                (example,),
                str(path),
                **names,
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            return
        except Exception:  # an operator torch.export cannot take; the other exporter may
            path.unlink(missing_ok=True)
        torch.onnx.export(
            backbone,
            (example,),
            str(path),
            **names,
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )


def _write_torchscript(trained: TrainedEncoder, path: Path) -> None:
    with _exporting(trained, "torchscript"), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated; it still loads
        traced = torch.jit.trace(_eval_copy(trained), _check_batch(trained, 2))
        # Through memory: torch names the archive inside after the file, and refuses the temporary name's
        # bare stem when `out` has no extension.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        path.write_bytes(buffer.getvalue())
        loaded = torch.jit.load(io.BytesIO(path.read_bytes()))
    _check_features(trained, loaded.eval(), "torchscript")


WRITERS: dict[str, Callable[[TrainedEncoder, Path], None]] = {
    "timm": _write_timm,
    "hf": _write_hf,
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
}


# -- helpers -------------------------------------------------------------------------------------------------
def _backbone_state(trained: TrainedEncoder) -> dict[str, torch.Tensor]:
    # Tensors that share storage (tied weights) are cloned, as safetensors stores each tensor on its own.
    return {
        key: value.detach().cpu().clone().contiguous() for key, value in trained.backbone.state_dict().items()
    }


def _eval_copy(trained: TrainedEncoder) -> nn.Module:
    """A CPU float32 copy of the backbone in eval mode: exporting traces it, leaving the run's untouched."""
    import copy

    return copy.deepcopy(trained.backbone).cpu().float().eval()


def _input_shape(trained: TrainedEncoder) -> tuple[int, int, int]:
    channels = trained.spec.in_chans
    size = trained.preprocessing.get("image_size") or 224
    return channels, size, size


def _check_batch(trained: TrainedEncoder, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, *_input_shape(trained), generator=generator)


def _check_features(trained: TrainedEncoder, exported: Callable[[torch.Tensor], torch.Tensor], format: str):
    """Fail unless `exported` gives the encoder's h on a random batch (of another size than tracing's).

    The tolerance scales with h where its values exceed 1: float32 kernels of other libraries round
    differently, in proportion to the values.
    """
    images = _check_batch(trained, 3)
    with torch.no_grad():
        trained.encoder.eval()
        expected = trained.backbone(images).float()  # h, as TrainedEncoder.embed gives it
        got = exported(images).float()
    tolerance = TOLERANCE * max(1.0, expected.abs().max().item())
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=tolerance):
        difference = (got - expected).abs().max().item() if got.shape == expected.shape else "n/a"
        others = [name for name in supported_formats(trained) if name != format]
        raise ConfigError(
            f"--format {format}: the export gives other features than the encoder (shape "
            f"{tuple(got.shape)} vs {tuple(expected.shape)}, largest difference {difference}, tolerance "
            f"{tolerance:.2g}); nothing was written. Try --format {' or --format '.join(others)}"
        )


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--format onnx needs {error.name}: {INSTALL_EXPORT}") from None


@contextlib.contextmanager
def _loading_back(format: str) -> Iterator[None]:
    """timm reading back what was written; a timm that cannot is a ConfigError naming its version."""
    import timm

    with warnings.catch_warnings():
        # timm warns when it adapts weights; the check's outcome is what matters.
        warnings.simplefilter("ignore")
        try:
            yield
        except (RuntimeError, ValueError, KeyError, TypeError, FileNotFoundError) as error:
            raise ConfigError(
                f"--format {format}: timm {timm.__version__} could not load the export back "
                f"({type(error).__name__}: {_first_line(error)}); nothing was written. A newer timm may "
                "read it; --format onnx and --format torchscript do not need timm"
            ) from error


@contextlib.contextmanager
def _exporting(trained: TrainedEncoder, format: str) -> Iterator[None]:
    """torch turning the backbone into a graph; an operator it cannot export is a ConfigError."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        others = [name for name in supported_formats(trained) if name != format]
        raise ConfigError(
            f"--format {format}: torch could not export this backbone ({type(error).__name__}: "
            f"{_first_line(error)}); nothing was written. Try --format {' or --format '.join(others)}"
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


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
