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

Modules: formats (which format carries which encoder), timm_files (timm and hf), graphs (onnx and
torchscript), verify (the read-back check), loading (the line that loads an export).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import EncoderFileError, TrainedEncoder, load_encoder
from ssl_toolkit.export.formats import FORMATS, require_known, supported_formats, unsupported_reason
from ssl_toolkit.export.graphs import require_onnx, write_onnx, write_torchscript
from ssl_toolkit.export.loading import loading_code
from ssl_toolkit.export.timm_files import write_hf, write_timm
from ssl_toolkit.files import replaced_atomically
from ssl_toolkit.run_dir import RunDirectory

__all__ = [
    "FORMATS",
    "export_encoder",
    "loading_code",
    "read_run_encoder",
    "supported_formats",
    "unsupported_reason",
]

# Each writes its format to a temporary path and checks what it wrote; `export_encoder` renames it.
WRITERS: dict[str, Callable[[TrainedEncoder, Path], None]] = {
    "timm": write_timm,
    "hf": write_hf,
    "onnx": write_onnx,
    "torchscript": write_torchscript,
}


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
    require_known(format)
    trained = read_run_encoder(run_dir)
    refusal = unsupported_reason(trained, format)
    if refusal is not None:
        raise ConfigError(refusal)
    out = Path(out)
    _require_writable(out, format, overwrite)
    if format == "onnx":
        require_onnx()
    with replaced_atomically(out) as partial:
        WRITERS[format](trained, partial)
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


def _require_writable(out: Path, format: str, overwrite: bool) -> None:
    """Refuse a timm file not named .safetensors, and an `out` that exists unless `overwrite`."""
    if format == "timm" and out.suffix != ".safetensors":
        # timm reads a `file` as safetensors by its suffix and as a pickle otherwise.
        raise ConfigError(
            f"--out {out}: a timm weight file must end in .safetensors (e.g. {out}.safetensors)"
        )
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"--out {out} exists already; pick another path or add --overwrite to replace it")
