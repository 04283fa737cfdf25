"""The check every export passes before it takes its name: read back, it gives the encoder's h.

A writer reads its file back the way the export's users will (timm, onnxruntime, torch.jit.load) and hands
the result to `check_features`, which compares it with the backbone's h on a random batch. The context
managers turn what torch or timm raise while exporting or loading back into a ConfigError that says what
to try instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch

from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import TrainedEncoder
from ssl_toolkit.export.formats import other_formats

TOLERANCE = 1e-4  # largest |h_export - h| accepted on the check batch, relative to h's scale when it is > 1
DEFAULT_IMAGE_SIZE = 224  # for an encoder file from before preprocessing was stored


def check_batch(trained: TrainedEncoder, size: int) -> torch.Tensor:
    """A fixed random batch of `size` images of the encoder's channels and image size.

    Args:
        trained: the encoder whose input the batch matches.
        size: the number of images.

    Returns:
        A float32 tensor (size, C, H, W), the same on every call.
    """
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, *_input_shape(trained), generator=generator)


def check_features(
    trained: TrainedEncoder, exported: Callable[[torch.Tensor], torch.Tensor], format: str
) -> None:
    """Fail unless `exported` gives the encoder's h on a random batch (of another size than tracing's).

    The tolerance scales with h where its values exceed 1: float32 kernels of other libraries round
    differently, in proportion to the values.

    Args:
        trained: the encoder the export was written from.
        exported: the export as read back, mapping images (N, C, H, W) to features (N, F).
        format: the export's format, for the message.

    Raises:
        ConfigError: the shapes differ or a feature is further from h than the tolerance.
    """
    images = check_batch(trained, 3)
    with torch.no_grad():
        trained.encoder.eval()
        expected = trained.backbone(images).float()  # h, as TrainedEncoder.embed gives it
        got = exported(images).float()
    tolerance = TOLERANCE * max(1.0, expected.abs().max().item())
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=tolerance):
        difference = (got - expected).abs().max().item() if got.shape == expected.shape else "n/a"
        raise ConfigError(
            f"--format {format}: the export gives other features than the encoder (shape "
            f"{tuple(got.shape)} vs {tuple(expected.shape)}, largest difference {difference}, tolerance "
            f"{tolerance:.2g}); nothing was written. Try --format {other_formats(trained, format)}"
        )


@contextlib.contextmanager
def loading_back(format: str) -> Iterator[None]:
    """timm reading back what was written; a timm that cannot is a ConfigError naming its version.

    Args:
        format: the export's format ("timm" or "hf"), for the message.

    Raises:
        ConfigError: timm raised while loading the export.
    """
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
def exporting(trained: TrainedEncoder, format: str) -> Iterator[None]:
    """torch turning the backbone into a graph; an operator it cannot export is a ConfigError.

    Args:
        trained: the encoder being exported, whose other formats the message names.
        format: the export's format ("onnx" or "torchscript").

    Raises:
        ConfigError: torch raised while tracing or exporting.
    """
    try:
        yield
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        raise ConfigError(
            f"--format {format}: torch could not export this backbone ({type(error).__name__}: "
            f"{_first_line(error)}); nothing was written. Try --format {other_formats(trained, format)}"
        ) from error


def _input_shape(trained: TrainedEncoder) -> tuple[int, int, int]:
    channels = trained.spec.in_chans
    size = trained.preprocessing.get("image_size") or DEFAULT_IMAGE_SIZE
    return channels, size, size


def _first_line(error: BaseException) -> str:
    """The first line of `error`'s message, at most 200 characters: torch's run to pages of trace."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""
