"""The non-finite guard: a NaN or infinite loss skips its step; too many in a row stop the run."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.checkpoint import TrainingProgress


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss."""


class NonFiniteGuard:
    """Decides, identically on every process, whether a step's loss may be stepped on.

    Args:
        accelerator: the run's accelerator.
        run: the run directory, whose last checkpoint the divergence message names.
        max_bad_steps: consecutive non-finite steps after which the run stops (`train.max_bad_steps`).
    """

    def __init__(self, accelerator: Accelerator, run: RunDirectory, max_bad_steps: int):
        self.accelerator = accelerator
        self.run = run
        self.max_bad_steps = max_bad_steps
        self.bad_in_a_row = 0

    def allows(self, loss: torch.Tensor, progress: TrainingProgress) -> bool:
        """True when the loss is finite on every process; otherwise counts a skipped step.

        Raises:
            TrainingDiverged: the `max_bad_steps`-th non-finite loss in a row.
        """
        # Every process must take the same decision, or the next gradient all-reduce would hang; this
        # reduction is a device-host sync per step, a small price for never stepping on a NaN.
        finite = self.accelerator.reduce(torch.isfinite(loss.detach()).float(), "sum").item()
        if finite == self.accelerator.num_processes:
            self.bad_in_a_row = 0
            return True
        progress.skipped_steps += 1
        self.bad_in_a_row += 1
        self.accelerator.print(
            f"step {progress.step}: non-finite loss, step skipped ({self.bad_in_a_row} in a row)"
        )
        if self.bad_in_a_row >= self.max_bad_steps:
            checkpoints = self.run.checkpoint_dirs()
            last_good = checkpoints[-1] if checkpoints else "none (no checkpoint was written yet)"
            raise TrainingDiverged(
                f"the loss was NaN or infinite for {self.bad_in_a_row} steps in a row "
                f"(train.max_bad_steps={self.max_bad_steps}) at step {progress.step}; "
                f"the last good checkpoint is {last_good}. Lower optim.lr, set train.clip_grad_norm "
                "or use train.mixed_precision=bf16 (not fp16); then resume with train.resume=auto"
            )
        return False
