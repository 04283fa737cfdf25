"""Checkpoints: atomic saves of finite states, verified resumes with a fallback, resumable batches.

A checkpoint folder holds Accelerate's state (model and optimiser, each process's random states), the run's
`config.yaml` and `progress.json`: the step, the processes and every file's size and SHA-256. The toolkit
registers no custom state with Accelerate, so nothing is loaded with `weights_only=False`; a file whose
digest differs from progress.json's, an old-style pickle among them, is never opened.
"""

from __future__ import annotations

import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from accelerate.utils import load as load_weights_only
from torch import nn
from torch.utils.data import DataLoader

from ssl_toolkit.config import Config, ConfigError
from ssl_toolkit.config.parse import config_from_dict
from ssl_toolkit.files import (
    PARTIAL_PREFIX,
    StorageFull,
    move_into_place,
    partial_path,
    storage_full_error,
    writing,
)
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training import resume_rules
from ssl_toolkit.training.checkpoint_files import (
    CONFIG_FILE,
    checkpoint_problem,
    describe_checkpoint,
    latest_checkpoint_phrase,
    read_description,
)
from ssl_toolkit.training.epoch_seeded import EpochSeededDataset
from ssl_toolkit.training.guard import TrainingDiverged
from ssl_toolkit.training.online_probe import OnlineLinearProbe
from ssl_toolkit.training.progress import TrainingProgress

CHECKPOINTS_KEPT = 2


def _all_finite(accelerator: Accelerator, model: nn.Module) -> bool:
    """Whether every parameter and floating buffer is finite on every process (one collective)."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float() if tensors else None
    flag = finite if finite is not None else torch.ones((), device=accelerator.device)
    return (
        accelerator.reduce(flag.to(accelerator.device), reduction="sum").item() == accelerator.num_processes
    )


def save_checkpoint(
    accelerator: Accelerator,
    run: RunDirectory,
    progress: TrainingProgress,
    model: nn.Module,
    config: Config,
    online_probe: OnlineLinearProbe | None = None,
) -> Path:
    """Save the state at `progress.step` into a temporary folder, renamed into place once complete and
    described by progress.json; keeps the last `CHECKPOINTS_KEPT`. The online probe, if any, is saved
    beside Accelerate's state (its copies are equal on every process; the main process writes it).

    A save killed halfway leaves a `.tmp` folder that resume ignores, and a full disk removes it: the
    previous checkpoint stays the latest usable one either way.

    Raises:
        TrainingDiverged: a parameter or buffer is NaN or infinite (nothing is written).
        StorageFull: the disk filled up (the partial folder is removed).
    """
    final = run.checkpoint(progress.step)
    partial = partial_path(final)
    if not _all_finite(accelerator, model):
        raise TrainingDiverged(
            f"the weights or BatchNorm statistics are NaN or infinite at step {progress.step}, so no "
            f"checkpoint was written; {latest_checkpoint_phrase(run)}. Lower optim.lr or set "
            "train.clip_grad_norm, then resume with train.resume=auto"
        )
    if accelerator.is_main_process:
        with writing(partial):
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        # Saves killed halfway, by this run or an earlier session of it (the lock keeps others out).
        for unfinished in run.checkpoints.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(unfinished, ignore_errors=True)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(partial))
        if online_probe is not None and accelerator.is_main_process:
            online_probe.save(partial)
    except Exception as error:  # every process must hear of it, or the others would wait
        failure = error
    failed = accelerator.reduce(torch.tensor(float(failure is not None), device=accelerator.device), "sum")
    if failed.item() > 0:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        if failure is None:
            raise RuntimeError(f"another process could not write its part of checkpoint {final}")
        full = storage_full_error(partial, failure)
        if full is None:
            raise failure
        raise StorageFull(
            f"{full}; {latest_checkpoint_phrase(run)}, intact: free space, then continue with "
            "train.resume=auto"
        ) from failure
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            with writing(partial):
                describe_checkpoint(partial, progress, accelerator.num_processes, config)
                move_into_place(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for old in run.checkpoint_dirs()[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _choose_checkpoint(run: RunDirectory, setting: str) -> tuple[Path | None, list[str]]:
    """The checkpoint `train.resume` names and the notes on the ones skipped; raises ConfigError if none."""
    if setting != "auto":
        path = Path(setting)
        if not path.is_dir():
            raise ConfigError(
                f"train.resume={setting!r} is not a checkpoint folder; use auto or a path under checkpoints/"
            )
        problem = _resume_problem(path)
        if problem is not None:
            raise ConfigError(f"train.resume={setting!r} cannot be resumed from: {problem}")
        return path, []
    notes = []
    for folder in reversed(run.checkpoint_dirs()):
        problem = _resume_problem(folder)
        if problem is None:
            return folder, notes
        notes.append(f"skipping checkpoint {folder}: {problem}")
    if notes:
        raise ConfigError(
            "; ".join(notes) + f"; no checkpoint of {run.path} can be resumed from: set run.overwrite=true "
            "to start the run again"
        )
    return None, []


def _resume_problem(folder: Path) -> str | None:
    """`checkpoint_problem`, and then whether the random states load as plain data: Accelerate loads them
    without code (weights only) and, when it cannot, resumes with fresh random states without a word."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        return problem
    for path in sorted(folder.glob("random_states_*.pkl")):
        try:
            load_weights_only(path)
        except Exception as error:
            first = " ".join(str(error).split())[:200]
            return f"{path.name} cannot be loaded as plain data ({type(error).__name__}: {first})"
    return None


def _saved_config(checkpoint: Path, run: RunDirectory) -> Config:
    source = checkpoint / CONFIG_FILE if (checkpoint / CONFIG_FILE).is_file() else run.config
    try:
        return config_from_dict(yaml.safe_load(source.read_text()) or {}, source=str(source))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the config of checkpoint {checkpoint} ({source}): {error}") from None


def _plan_resume(
    accelerator: Accelerator, run: RunDirectory, config: Config
) -> tuple[str | None, dict | None]:
    """On the main process: the checkpoint to load and its description, after the config checks."""
    checkpoint, notes = _choose_checkpoint(run, config.train.resume)
    for note in notes:
        print(note, flush=True)
    if checkpoint is None:
        return None, None
    description = read_description(checkpoint)
    changes = resume_rules.changed_keys(
        _saved_config(checkpoint, run), description["num_processes"], config, accelerator.num_processes
    )
    resume_rules.check_resume(changes, config.train.resume_allow, str(checkpoint))
    description["changes"] = {key: list(values) for key, values in changes.items()}
    return str(checkpoint), description


def resume(accelerator: Accelerator, run: RunDirectory, config: Config, progress: TrainingProgress) -> None:
    """Restore `progress` (and everything prepared, the random states included) from the checkpoint
    `train.resume` names, in place as `accelerator.load_state` restores the rest; left as it is (a fresh
    run) without `train.resume` or checkpoints.

    `auto` takes the newest checkpoint that verifies, naming each one skipped. metrics.jsonl then loses the
    records after the checkpoint's step, which this session logs again, and resumes.jsonl records the resume.

    Raises:
        ConfigError: no checkpoint can be resumed from, or resuming would change the run (naming the keys).
    """
    if config.train.resume is None:
        return
    plan: list = [None, None, None]
    if accelerator.is_main_process:
        try:
            plan[:2] = _plan_resume(accelerator, run, config)
        except ConfigError as error:
            plan[2] = str(error)
    if accelerator.num_processes > 1:
        broadcast_object_list(plan)
    checkpoint, description, problem = plan
    if problem is not None:
        raise ConfigError(problem)
    if checkpoint is None:
        accelerator.print(
            f"train.resume={config.train.resume}: no checkpoint in {run.checkpoints} yet; starting at step 0"
        )
        if accelerator.is_main_process:
            run.drop_metrics_after(0)
        return
    try:
        accelerator.load_state(checkpoint)
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"checkpoint {checkpoint} does not fit this run's model or optimiser: {first_line}"
        ) from None
    progress.load_state_dict(description)
    progress.checkpoint = checkpoint
    if accelerator.is_main_process:
        run.drop_metrics_after(progress.step)
        run.append_resume(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "checkpoint": checkpoint,
                "step": progress.step,
                "changed": description["changes"],
            }
        )
    changes = {key: tuple(values) for key, values in description["changes"].items()}
    accelerator.print(
        f"resumed from {checkpoint} at step {progress.step}; changed: {resume_rules.describe(changes)}"
    )


def resumable_batches(
    accelerator: Accelerator,
    loader: DataLoader,
    items: EpochSeededDataset,
    progress: TrainingProgress,
    total_steps: int,
) -> Iterator:
    """The batches of every epoch from `progress.step` on, until `progress.step` reaches `total_steps`.

    Each epoch has its own reproducible shuffle and views, so a run resumed mid-epoch skips the batches it
    had trained on and then sees exactly what the uninterrupted run saw. A batch whose step was skipped
    (non-finite loss) does not advance `progress.step`; the next batch is tried instead.
    """
    steps_per_epoch = len(loader)
    epoch = progress.step // steps_per_epoch
    while progress.step < total_steps:
        loader.set_epoch(epoch)  # a different, reproducible shuffle every epoch
        items.set_epoch(epoch)  # and different, reproducible views
        batches = loader
        if progress.step > epoch * steps_per_epoch:  # resumed mid-epoch
            batches = accelerator.skip_first_batches(loader, progress.step - epoch * steps_per_epoch)
        for batch in batches:
            yield batch
            if progress.step >= total_steps:
                return
        epoch += 1
