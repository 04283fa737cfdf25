"""Tiny pretraining runs for tests, one Accelerate reset and one metrics reader."""

from __future__ import annotations

from pathlib import Path

from ssl_toolkit.config import load_config
from ssl_toolkit.process.launch import reset_accelerate
from ssl_toolkit.run_dir import RunDirectory

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"

# Small enough that a pretraining step takes well under a second on 2 CPU cores.
TINY_RUN = [
    "data.image_size=8",
    "model.backbone=test_resnet",
    "model.proj_dim=16",
    "train.batch_size=32",
    "train.max_steps=2",
    "train.checkpoint_every=1",
    "log.trackers=[]",
    "log.every=1",
]

# A tiny GRU on CoLES slices of synthetic event sequences, for the quickstart recipe.
SEQUENCE_RUN = [
    "data.name=synthetic_events",
    "data.num_samples=240",
    "augment.split_count=3",
    "augment.cnt_min=8",
    "augment.cnt_max=40",
    "model.backbone=gru",
    "model.backbone_args={hidden_size: 32, embedding_dim: 8}",
    "model.proj_dim=16",
    "loss.name=coles",
    "loss.temperature=0.2",
    "optim.name=adamw",
    "optim.lr=3.0e-3",
    "optim.warmup_epochs=0",
    "train.batch_size=32",
    "train.checkpoint_every=5",
    "log.trackers=[]",
    "log.every=1",
]


def load_module(path: Path):
    """The Python file `path` (a worker that a launcher runs) imported as a module of its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(output_dir, name="tiny", *overrides):
    return load_config(
        QUICKSTART, [*TINY_RUN, f"run.output_dir={output_dir}", f"run.name={name}", *overrides]
    )


def pretrain_tiny(output_dir, name="tiny", *overrides, config=None) -> Path:
    """A tiny run of the quickstart recipe with `overrides` (or of `config`); returns its directory."""
    from ssl_toolkit.pretrain import pretrain

    reset_accelerate()
    try:
        return pretrain(config if config is not None else tiny_config(output_dir, name, *overrides))
    finally:
        reset_accelerate()


def records(run_dir) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order."""
    return RunDirectory(run_dir).read_metrics()


def logged_losses(run_dir) -> list[float]:
    """The `loss` of every record of a run's metrics.jsonl, in order."""
    return [record["loss"] for record in records(run_dir)]


# The uninterrupted runs that stopped, killed and resumed runs are compared with, bit for bit: a tiny run
# long enough that every stop lands mid-epoch (digits has 42 batches of 32 an epoch), one thread per process
# so that every run compared does the same arithmetic.
REFERENCE_STEPS = 12
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def reference_arguments(output_dir, name, *overrides) -> list[str]:
    """The command-line arguments of a reference-length run of the tests' tiny recipe."""
    return [
        str(QUICKSTART), *TINY_RUN, f"train.max_steps={REFERENCE_STEPS}", "train.checkpoint_every=100",
        f"run.output_dir={output_dir}", f"run.name={name}", *overrides,
    ]  # fmt: skip


def launch_pretraining(launcher, output_dir, name, *overrides, **options):
    """Start a reference-length pretraining with `launcher` (ssl_toolkit.process.launch), one thread per
    process, its output in `output_dir/name.log`; returns the `Launched`."""
    from ssl_toolkit.process.launch import Command

    command = Command.of_module("ssl_toolkit.pretrain", reference_arguments(output_dir, name, *overrides))
    return launcher.start(
        command, log=Path(output_dir) / f"{name}.log", environment=ONE_THREAD, cwd=REPO, **options
    )


def pretrain_to_the_end(launcher, output_dir, name, *overrides) -> RunDirectory:
    """A reference-length pretraining run to its end with `launcher`; fails the test with its log if not."""
    finished = launch_pretraining(launcher, output_dir, name, *overrides).wait(timeout=300)
    log = Path(output_dir) / f"{name}.log"
    assert finished.exit_code == 0, log.read_text()[-3000:]
    return RunDirectory(Path(output_dir) / name)
