"""Which export formats can carry which trained encoder, and why the others cannot."""

from __future__ import annotations

from typing import Any

from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import TrainedEncoder

FORMATS = ("timm", "hf", "onnx", "torchscript")
TIMM_FORMATS = ("timm", "hf")  # rebuilt by plain timm from the architecture's name and arguments
GRAPH_FORMATS = ("onnx", "torchscript")  # the graph travels with the weights


def require_known(format: str) -> None:
    """Raise a ConfigError naming the valid formats unless `format` is one of `FORMATS`.

    Args:
        format: the name given with --format.

    Raises:
        ConfigError: `format` is not one of `FORMATS`.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r} (--format); valid: {', '.join(FORMATS)}")


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


def other_formats(trained: TrainedEncoder, format: str) -> str:
    """The formats besides `format` that carry `trained`, as the tail of a "Try --format ..." hint."""
    others = [name for name in supported_formats(trained) if name != format]
    return " or --format ".join(others)


def _not_plain_timm(spec: Any) -> str | None:
    """What keeps plain timm from building the backbone of an image encoder's `spec` (its `backbone` name
    and `cifar_stem`) by name and keyword arguments, or None."""
    import timm

    if not timm.is_model(spec.backbone):
        return f"model.backbone={spec.backbone} is not a timm architecture"
    module = timm.models.model_entrypoint(spec.backbone).__module__
    if not module.startswith("timm."):  # registered by a package that plain timm does not import
        return f"model.backbone={spec.backbone} is registered with timm by {module.split('.')[0]}, not timm"
    if spec.cifar_stem:
        return "model.cifar_stem=true replaces timm's stem after timm builds the model"
    return None
