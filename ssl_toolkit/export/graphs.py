"""The formats whose file carries the graph with the weights: ONNX and TorchScript.

They take any image backbone, including those plain timm cannot rebuild by name. Each writer traces a copy
of the backbone on a batch of two images, writes the file, loads it back with the runtime its users will
(onnxruntime, torch.jit.load) and checks its features on a batch of another size.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import TrainedEncoder
from ssl_toolkit.export.verify import check_batch, check_features, exporting

INSTALL_EXPORT = "pip install 'ssl-toolkit[export]'"


def require_onnx() -> None:
    """Raise a ConfigError with the install command unless onnx and onnxruntime import.

    Raises:
        ConfigError: onnx or onnxruntime is missing.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--format onnx needs {error.name}: {INSTALL_EXPORT}") from None


def write_onnx(trained: TrainedEncoder, path: Path) -> None:
    """Write `trained`'s backbone to `path` as an ONNX graph, `images` (N, C, H, W) → `features` (N, F).

    Args:
        trained: the encoder whose backbone is exported.
        path: the file to write (a temporary name).

    Raises:
        ConfigError: torch cannot export the backbone, or onnxruntime's features are not the encoder's.
    """
    import onnxruntime

    with exporting(trained, "onnx"):
        _export_onnx(_eval_copy(trained), check_batch(trained, 2), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda images: torch.from_numpy(session.run(["features"], {"images": images.numpy()})[0])  # noqa: E731
    check_features(trained, run, "onnx")


def write_torchscript(trained: TrainedEncoder, path: Path) -> None:
    """Write `trained`'s backbone to `path` as a traced module for `torch.jit.load`.

    Args:
        trained: the encoder whose backbone is exported.
        path: the file to write (a temporary name).

    Raises:
        ConfigError: torch cannot trace the backbone, or the loaded module's features are not the encoder's.
    """
    with exporting(trained, "torchscript"), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated; it still loads
        traced = torch.jit.trace(_eval_copy(trained), check_batch(trained, 2))
        # Through memory: torch names the archive inside after the file, and refuses the temporary name's
        # bare stem when `out` has no extension.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        path.write_bytes(buffer.getvalue())
        loaded = torch.jit.load(io.BytesIO(path.read_bytes()))
    check_features(trained, loaded.eval(), "torchscript")


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


def _eval_copy(trained: TrainedEncoder) -> nn.Module:
    """A CPU float32 copy of the backbone in eval mode: exporting traces it, leaving the run's untouched."""
    return copy.deepcopy(trained.backbone).cpu().float().eval()
