"""W&B and TensorBoard: how pretraining starts its trackers and how evaluation adds to a finished run."""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator

from ssl_toolkit.config import Config, to_dict
from ssl_toolkit.run_dir import RunDirectory

PROJECT = "ssl_toolkit"  # the W&B project and TensorBoard folder of every run


def _offline_wandb_defaults() -> None:
    # Offline unless the user asks otherwise, so a run never needs an account or a network.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def flat_hyperparameters(config: Config) -> dict[str, int | float | str | bool]:
    """`section.key` scalars: TensorBoard's hyperparameters accept nothing nested, no lists and no None."""
    flat = {
        f"{section}.{key}" if isinstance(values, dict) else section: value
        for section, values in to_dict(config).items()
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)])
    }
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def init_trackers(accelerator: Accelerator, config: Config, run: RunDirectory) -> None:
    """Start the trackers of `log.trackers` on the accelerator, writing under the run directory."""
    if not config.log.trackers:
        return
    init_kwargs = {}
    if "wandb" in config.log.trackers:
        _offline_wandb_defaults()
        init_kwargs["wandb"] = {"name": config.run.name, "dir": str(run.path)}
        if config.log.group is not None:
            init_kwargs["wandb"]["group"] = config.log.group
    accelerator.init_trackers(PROJECT, config=flat_hyperparameters(config), init_kwargs=init_kwargs)


def wandb_run_id(wandb_dir: Path) -> str | None:
    """The id of the W&B run logged under `wandb_dir`, from its latest `run-<id>.wandb` file, or None.

    (The folder names end in the id too, unless W&B appended a counter to make them unique.)
    """
    logs = sorted(wandb_dir.glob("*run-*/run-*.wandb"), key=lambda path: path.stat().st_mtime)
    return logs[-1].stem.removeprefix("run-") if logs else None


def publish(config: Config, run: RunDirectory, summary: dict, images: dict[str, Path] | None = None) -> bool:
    """Add `summary` values (and images) to the run's W&B run, when pretraining logged to W&B.

    The run is resumed by its id (offline unless WANDB_MODE says otherwise, as in pretraining), so
    `wandb sync` merges the results into the pretraining run's summary. Returns whether it published.
    """
    if "wandb" not in config.log.trackers:
        return False
    run_id = wandb_run_id(run.wandb)
    if run_id is None:
        return False
    import wandb

    _offline_wandb_defaults()
    wandb_run = wandb.init(
        project=PROJECT, id=run_id, resume="allow", dir=str(run.path), name=config.run.name
    )
    try:
        wandb_run.summary.update(summary)
        for name, path in (images or {}).items():
            wandb_run.summary[name] = wandb.Image(str(path))
    finally:
        wandb_run.finish()
    return True


def publish_study(
    group: str, directory: Path, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path]
) -> None:
    """Log a study's tables (name → (columns, rows)) and plots to a W&B run of its own in the study's group
    (offline unless WANDB_MODE says otherwise), beside the study's runs, which joined it via `log.group`."""
    import wandb

    _offline_wandb_defaults()
    wandb_run = wandb.init(
        project=PROJECT, group=group, name=f"{group} (tables)", job_type="study", dir=str(directory)
    )
    try:
        logged = {name: wandb.Table(columns=columns, data=rows) for name, (columns, rows) in tables.items()}
        logged.update({name: wandb.Image(str(path)) for name, path in images.items()})
        wandb_run.log(logged)
    finally:
        wandb_run.finish()
