"""Checkpoints: the step counter saved with Accelerate's state, atomic saves, resume, resumable batches."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader

from ssl_toolkit.config import ConfigError
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.epoch_seeded import EpochSeededDataset

CHECKPOINTS_KEPT = 2


class TrainingProgress:
    """The step counter and the count of skipped steps, saved and restored with Accelerate's checkpoints."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped_steps = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


def save_checkpoint(accelerator: Accelerator, run: RunDirectory, step: int) -> Path:
    """`save_state` into a temporary folder, renamed into place only once complete; keeps the last two.

    A save killed halfway leaves a `.tmp` folder that resume ignores, so the previous checkpoint
    stays the latest usable one.
    """
    final = run.checkpoint(step)
    partial = final.with_name(f".tmp_{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in run.checkpoint_dirs()[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_dir(run: RunDirectory, resume: str | None) -> Path | None:
    """The checkpoint `train.resume` names: None, `auto` (the latest, if any) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "auto":
        found = run.checkpoint_dirs()
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(
            f"train.resume={resume!r} is not a checkpoint folder; use auto or a path under checkpoints/"
        )
    return path


def resume(accelerator: Accelerator, run: RunDirectory, setting: str | None) -> TrainingProgress:
    """The run's progress, registered for checkpointing and restored (with everything prepared, the
    random states included) from the checkpoint `train.resume` names."""
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    checkpoint = resume_dir(run, setting)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")
    return progress


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
