"""The line of Python that loads an export without ssl_toolkit, as `ssl-toolkit export` prints it."""

from __future__ import annotations

import json
from pathlib import Path

from ssl_toolkit.export.formats import require_known
from ssl_toolkit.export.timm_files import timm_create_kwargs


def loading_code(path: str | Path, format: str) -> str:
    """A line of Python that loads the export at `path` without ssl_toolkit (absolute path).

    For the timm format it is the exact `timm.create_model(...)` call, read from the file's metadata, whose
    `pretrained_cfg_overlay` makes `timm.data.resolve_model_data_config(model)` give the run's
    preprocessing.

    Args:
        path: the export, a file (a folder for "hf").
        format: the format it was written in, one of `FORMATS`.

    Returns:
        The line, with `images` standing for a float32 batch (N, C, H, W) where the format needs one.

    Raises:
        ConfigError: an unknown format.
    """
    require_known(format)
    path = Path(path).absolute()
    if format == "timm":
        return _timm_loading_code(path)
    if format == "hf":
        return _python_call("timm.create_model", f"local-dir:{path}", {"pretrained": True})
    if format == "onnx":
        return (
            f'onnxruntime.InferenceSession({str(path)!r}).run(["features"], {{"images": images}})[0]'
            "  # images: float32 (N, C, H, W)"
        )
    return f"torch.jit.load({str(path)!r})(images)  # images: float32 (N, C, H, W)"


def _timm_loading_code(path: Path) -> str:
    """The `timm.create_model(...)` call of the timm export `path`, from the config in its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    cfg, model_args = json.loads(metadata["pretrained_cfg"]), json.loads(metadata["model_args"])
    kwargs = timm_create_kwargs(cfg, model_args, str(path))
    return _python_call("timm.create_model", cfg["architecture"], kwargs)


def _python_call(function: str, first: str | None, kwargs: dict) -> str:
    """`function(first, key=value, ...)` as Python source, dicts written as dict(...)."""

    def source(value: object) -> str:
        if isinstance(value, dict) and all(str(key).isidentifier() for key in value):
            return "dict(" + ", ".join(f"{key}={source(item)}" for key, item in value.items()) + ")"
        return repr(value)

    parts = [repr(first)] if first is not None else []
    for key, value in kwargs.items():
        parts.append(f"{key}={source(value)}" if key.isidentifier() else f"**{{{key!r}: {source(value)}}}")
    return f"{function}({', '.join(parts)})"
