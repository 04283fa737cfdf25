"""`ssl-toolkit export`: each format loads in the other library without ssl_toolkit and gives the run's h.

The runs are tiny encoder files written directly (no pretraining), with random BatchNorm statistics so
that an export left in training mode, or one that lost the statistics, would give other features.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_toolkit.cli import main
from ssl_toolkit.config import ConfigError
from ssl_toolkit.encoder_file import load_encoder, save_encoder
from ssl_toolkit.export import export_encoder, loading_code
from ssl_toolkit.kinds.images.backbones import EncoderSpec, create_encoder
from ssl_toolkit.run_dir import RunDirectory

ATOL = 1e-5
RGB = {"image_size": 32, "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
GRAY = {"image_size": 28, "channels": 1, "mean": [0.3], "std": [0.2]}
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}


def make_run(path: Path, spec: EncoderSpec, preprocessing: dict) -> Path:
    """A run directory holding only an encoder file of `spec`, its BatchNorm statistics random."""
    torch.manual_seed(0)
    encoder = create_encoder(spec)
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    run = RunDirectory(path)
    run.path.mkdir(parents=True)
    extra = {"step": 2, "data": {"name": "digits", **preprocessing}}
    save_encoder(encoder, run.encoder, spec=spec, kind="image", preprocessing=preprocessing, extra=extra)
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs (exports only read them): RGB test_resnet, grayscale narrow resnet18, small_convnet."""
    root = tmp_path_factory.mktemp("runs")
    gray = EncoderSpec("resnet18", in_chans=1, backbone_args=TINY_RESNET, proj_dim=8)
    convnet = EncoderSpec("small_convnet", in_chans=1, backbone_args={"widths": [8, 16]}, proj_dim=8)
    return {
        "rgb": make_run(root / "rgb", EncoderSpec("test_resnet", proj_dim=8), RGB),
        "gray": make_run(root / "gray", gray, GRAY),
        "convnet": make_run(root / "convnet", convnet, GRAY),
    }


@pytest.fixture
def rgb_run(runs):
    return runs["rgb"]


@pytest.fixture
def convnet_run(runs):
    return runs["convnet"]


def images_for(run: Path, count: int = 4) -> torch.Tensor:
    preprocessing = load_encoder(RunDirectory(run).encoder).preprocessing
    size = preprocessing["image_size"]
    return torch.randn(
        count, preprocessing["channels"], size, size, generator=torch.Generator().manual_seed(1)
    )


def expected_features(run: Path, images: torch.Tensor) -> torch.Tensor:
    return load_encoder(RunDirectory(run).encoder).embed(images)


# Run in a fresh interpreter: each printed loading line, evaluated as a user would paste it. ssl_toolkit is
# installed there too, so the script checks at the end that nothing imported it.
PLAIN_SCRIPT = """
import json, sys, warnings
import timm, torch
from safetensors.torch import load_file

warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
inputs, lines = load_file("inputs.safetensors"), json.load(open("lines.json"))
rgb, gray = inputs["rgb"], inputs["gray"]
gray_as_rgb = lines["gray"].replace("in_chans=1", "in_chans=3")  # timm spreads the stem over 3 channels
models = {
    "timm": eval(lines["timm"]),
    "gray": eval(lines["gray"]),
    "gray_as_rgb": eval(gray_as_rgb),
    "hf": eval(lines["hf"]),
}
with torch.no_grad():
    result = {
        "timm": models["timm"].eval()(rgb),
        "gray": models["gray"].eval()(gray),
        "gray_as_rgb": models["gray_as_rgb"].eval()(gray.repeat(1, 3, 1, 1)),
        "hf": models["hf"].eval()(gray),
        "torchscript": eval(lines["torchscript"], {"torch": torch, "images": rgb}),
    }
data = {name: timm.data.resolve_model_data_config(models[name]) for name in ("timm", "gray", "hf")}
assert not [m for m in sys.modules if m.split(".")[0] == "ssl_toolkit"], "ssl_toolkit was imported"
torch.save(result, "features.pt")
json.dump(data, open("data.json", "w"))
"""


@pytest.fixture(scope="module")
def plain(runs, tmp_path_factory) -> dict:
    """The timm, hf and torchscript exports loaded by plain timm and torch, in one interpreter (one start-up
    of torch and timm for all): their h, and timm's data config of each timm model."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("exports")
    exports = {
        "timm": (export_encoder(runs["rgb"], "timm", folder / "rgb.safetensors"), "timm"),
        "gray": (export_encoder(runs["gray"], "timm", folder / "gray.safetensors"), "timm"),
        "hf": (export_encoder(runs["gray"], "hf", folder / "hub-folder"), "hf"),
        "torchscript": (export_encoder(runs["rgb"], "torchscript", folder / "rgb.pt"), "torchscript"),
    }
    lines = {name: loading_code(path, format) for name, (path, format) in exports.items()}
    (folder / "lines.json").write_text(json.dumps(lines))
    images = {"rgb": images_for(runs["rgb"]), "gray": images_for(runs["gray"])}
    save_file(images, str(folder / "inputs.safetensors"))
    completed = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT], capture_output=True, text=True, cwd=folder, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {
        "features": torch.load(folder / "features.pt"),
        "data": json.loads((folder / "data.json").read_text()),
        "images": images,
        "exports": {name: path for name, (path, _) in exports.items()},
        "lines": lines,
    }


def data_config(preprocessing: dict) -> dict:
    size = preprocessing["image_size"]
    return {
        "input_size": [preprocessing["channels"], size, size],
        "interpolation": "bilinear",
        "mean": preprocessing["mean"],
        "std": preprocessing["std"],
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


@pytest.mark.slow
def test_timm_export_loads_in_plain_timm_with_the_runs_preprocessing(runs, plain):
    line = plain["lines"]["timm"]
    assert line.startswith("timm.create_model('test_resnet', pretrained=True, num_classes=0, ")
    assert f"file={str(plain['exports']['timm'].absolute())!r}" in line
    expected = expected_features(runs["rgb"], plain["images"]["rgb"])
    torch.testing.assert_close(plain["features"]["timm"], expected, rtol=0, atol=ATOL)
    assert plain["data"]["timm"] == data_config(RGB)

    from safetensors import safe_open

    with safe_open(str(plain["exports"]["timm"]), framework="pt") as handle:
        cfg = json.loads(handle.metadata()["pretrained_cfg"])
        names = list(handle.keys())
    assert not any(name.startswith(("head.", "fc.")) for name in names)  # the backbone only
    assert cfg["architecture"] == "test_resnet" and cfg["input_size"] == [3, 32, 32]
    assert (
        cfg["mean"] == RGB["mean"] and cfg["std"] == RGB["std"] and cfg["num_features"] == expected.shape[1]
    )


@pytest.mark.slow
def test_grayscale_timm_export_takes_one_channel_or_the_image_repeated_to_three(runs, plain):
    # The stored stem keeps its one channel; the line builds the model for it and passes the backbone_args.
    assert "in_chans=1, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64]" in plain["lines"]["gray"]
    expected = expected_features(runs["gray"], plain["images"]["gray"])
    torch.testing.assert_close(plain["features"]["gray"], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(plain["features"]["gray_as_rgb"], expected, rtol=0, atol=ATOL)
    assert plain["data"]["gray"] == data_config(GRAY)


@pytest.mark.slow
def test_hf_export_is_a_folder_timm_loads_as_a_local_directory(runs, plain):
    out = plain["exports"]["hf"]
    assert {path.name for path in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert config["model_args"] == {"in_chans": 1, **TINY_RESNET}
    assert plain["lines"]["hf"] == f"timm.create_model('local-dir:{out.absolute()}', pretrained=True)"
    expected = expected_features(runs["gray"], plain["images"]["gray"])
    torch.testing.assert_close(plain["features"]["hf"], expected, rtol=0, atol=ATOL)
    assert plain["data"]["hf"] == data_config(GRAY)
    assert "library_name: timm" in (out / "README.md").read_text()


@pytest.mark.slow
def test_torchscript_export_loads_with_torch_alone(runs, plain):
    expected = expected_features(runs["rgb"], plain["images"]["rgb"])
    torch.testing.assert_close(plain["features"]["torchscript"], expected, rtol=0, atol=ATOL)


def test_the_command_prints_what_it_wrote_and_how_to_load_it(rgb_run, tmp_path, capsys):
    out = tmp_path / "exports" / "backbone.safetensors"
    assert main(["export", str(rgb_run), "--format", "timm", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote the backbone of {rgb_run} (h, no projection head) as timm to {out}"
    assert lines[1:] == ["load it with plain timm:", f"  {loading_code(out, 'timm')}"]


@pytest.mark.slow  # torch's ONNX exporter traces the graph
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(rgb_run, tmp_path):
    import onnxruntime

    out = export_encoder(rgb_run, "onnx", tmp_path / "backbone.onnx")
    assert "onnxruntime.InferenceSession" in loading_code(out, "onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["features"]
    for count in (1, 5):
        images = images_for(rgb_run, count)
        features = torch.from_numpy(session.run(["features"], {"images": images.numpy()})[0])
        torch.testing.assert_close(features, expected_features(rgb_run, images), rtol=0, atol=ATOL)


@pytest.mark.slow  # the graph exporters trace the model
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_small_convnet_goes_to_the_graph_formats_only(convnet_run, tmp_path):
    for format in ("timm", "hf"):
        with pytest.raises(ConfigError, match=r"small_convnet.*--format onnx or --format torchscript"):
            export_encoder(convnet_run, format, tmp_path / f"out_{format}.safetensors")
    assert not list(tmp_path.glob("out_*"))
    images = images_for(convnet_run)
    expected = expected_features(convnet_run, images)
    traced = torch.jit.load(str(export_encoder(convnet_run, "torchscript", tmp_path / "convnet.pt")))
    torch.testing.assert_close(traced(images), expected, rtol=0, atol=ATOL)
    # An --out without an extension (torch names the archive inside after the file)
    traced = torch.jit.load(str(export_encoder(convnet_run, "torchscript", tmp_path / "convnet")))
    torch.testing.assert_close(traced(images), expected, rtol=0, atol=ATOL)

    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(export_encoder(convnet_run, "onnx", tmp_path / "convnet.onnx"))
    )
    features = torch.from_numpy(session.run(["features"], {"images": images.numpy()})[0])
    torch.testing.assert_close(features, expected, rtol=0, atol=ATOL)


def test_a_vit_of_any_input_size_is_rebuilt_at_the_size_it_was_built_for(tmp_path):
    # timm builds test_vit for its registry's 160 px and this one takes 32 px images as well; a rebuild
    # from the 32 px input size alone would resample the position embedding (the export's check says so).
    spec = EncoderSpec("test_vit", backbone_args={"dynamic_img_size": True}, proj_dim=8)
    run = make_run(tmp_path / "vit", spec, RGB)
    out = export_encoder(run, "timm", tmp_path / "vit.safetensors")
    assert "dynamic_img_size=True, img_size=[160, 160]" in loading_code(out, "timm")
    assert "input_size=(3, 32, 32)" in loading_code(out, "timm")


def test_a_backbone_torch_cannot_trace_is_a_config_error(rgb_run, tmp_path, monkeypatch):
    def untraceable(*args, **kwargs):
        raise RuntimeError("an operator the tracer does not know\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    with pytest.raises(ConfigError, match=r"torch could not export.*operator the tracer.*--format timm"):
        export_encoder(rgb_run, "torchscript", tmp_path / "backbone.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_cifar_stem_is_refused_for_timm(tmp_path):
    spec = EncoderSpec("resnet18", cifar_stem=True, backbone_args=TINY_RESNET, proj_dim=8)
    run = make_run(tmp_path / "cifar", spec, RGB)
    with pytest.raises(ConfigError, match=r"cifar_stem=true.*--format onnx or --format torchscript"):
        export_encoder(run, "timm", tmp_path / "out.safetensors")


def test_an_event_sequence_encoder_is_refused_with_what_to_use_instead(tmp_path):
    from ssl_toolkit.kinds.sequences.encoders import SequenceEncoderSpec, create_sequence_encoder

    spec = SequenceEncoderSpec("gru", {"mcc": 5}, {"amount": [0.0, 1.0]}, backbone_args={"hidden_size": 8})
    run = RunDirectory(tmp_path / "events")
    run.path.mkdir()
    preprocessing = {"categorical": spec.categorical, "numeric": spec.numeric}
    save_encoder(
        create_sequence_encoder(spec), run.encoder, spec=spec, kind="sequence", preprocessing=preprocessing
    )
    for format in ("timm", "onnx"):
        with pytest.raises(ConfigError, match=r"sequence data.*load_encoder"):
            export_encoder(run.path, format, tmp_path / "out")


def test_an_existing_out_is_kept_unless_overwrite(rgb_run, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_text("someone's file")
    with pytest.raises(ConfigError, match=r"taken\.safetensors exists already.*--overwrite"):
        export_encoder(rgb_run, "timm", out)
    assert out.read_text() == "someone's file"
    export_encoder(rgb_run, "timm", out, overwrite=True)
    assert out.stat().st_size > 1000
    folder = tmp_path / "folder"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(ConfigError, match="exists already"):
        export_encoder(rgb_run, "hf", folder)
    export_encoder(rgb_run, "hf", folder, overwrite=True)
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_failed_check_leaves_nothing_behind(rgb_run, tmp_path, monkeypatch):
    from ssl_toolkit.export import timm_files

    written = timm_files._backbone_state

    def off_by_one(trained):  # weights that do not give the encoder's h
        return {
            key: value + 1 if value.is_floating_point() else value for key, value in written(trained).items()
        }

    monkeypatch.setattr(timm_files, "_backbone_state", off_by_one)
    out = tmp_path / "exports" / "backbone.safetensors"
    with pytest.raises(ConfigError, match=r"other features than the encoder.*nothing was written"):
        export_encoder(rgb_run, "timm", out)
    with pytest.raises(ConfigError, match="other features"):
        export_encoder(rgb_run, "hf", tmp_path / "exports" / "folder")
    assert list((tmp_path / "exports").iterdir()) == []


def test_what_cannot_be_exported_is_named(rgb_run, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown export format 'keras'.*timm, hf, onnx, torchscript"):
        export_encoder(rgb_run, "keras", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"no run directory at .*nowhere"):
        export_encoder(tmp_path / "nowhere", "onnx", tmp_path / "out.onnx")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ConfigError, match=r"no encoder at .*unfinished/encoder\.safetensors"):
        export_encoder(tmp_path / "unfinished", "onnx", tmp_path / "out.onnx")
    with pytest.raises(ConfigError, match=r"must end in \.safetensors"):
        export_encoder(rgb_run, "timm", tmp_path / "weights.pt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'ssl-toolkit\[export\]'"):
        export_encoder(rgb_run, "onnx", tmp_path / "out.onnx")


def test_the_command_reports_a_refusal_in_one_line_with_exit_code_2(convnet_run, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert main(["export", str(convnet_run), "--format", "timm", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("error: --format timm: ") and "--format onnx" in captured.err
    out.write_text("")
    assert main(["export", str(convnet_run), "--format", "onnx", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {out} exists already")
    with pytest.raises(SystemExit) as error:  # argparse refuses an unknown format itself
        main(["export", str(convnet_run), "--format", "keras", "--out", str(out)])
    assert error.value.code == 2
