"""The non-finite guard: a NaN or infinite loss skips its step; too many in a row stop the run.

A skipped step leaves the model as it was before it: no optimiser step, and the BatchNorm statistics its
forward pass updated are put back, so the last checkpoint and every later one stay finite.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from ssl_toolkit.process.status import RunFailure, Status
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.checkpoint_files import latest_checkpoint_phrase
from ssl_toolkit.training.progress import TrainingProgress


class TrainingDiverged(RuntimeError, RunFailure):
    """Too many consecutive steps had a NaN or infinite loss (or the weights became NaN or infinite)."""

    status = Status.DIVERGED  # change the hyperparameters, then resume from the last good checkpoint


class NonFiniteGuard:
    """Decides, identically on every process, whether a step's loss may be stepped on.

    Args:
        accelerator: the run's accelerator.
        run: the run directory, whose last checkpoint the divergence message names.
        max_bad_steps: consecutive non-finite steps after which the run stops (`train.max_bad_steps`).
    """

    def __init__(self, accelerator: Accelerator, run: RunDirectory, max_bad_steps: int, model: nn.Module):
        self.accelerator = accelerator
        self.run = run
        self.max_bad_steps = max_bad_steps
        self.bad_in_a_row = 0
        self.stop_everywhere = False
        # The running statistics a forward pass updates in train mode (BatchNorm's mean, var and count).
        self.buffers = [buffer for buffer in model.buffers()]
        self.before_step = [buffer.detach().clone() for buffer in self.buffers]

    @torch.no_grad()
    def remember_buffers(self) -> None:
        """Keep the buffers as they are before a step's forward pass, to put back if the step is skipped."""
        for kept, buffer in zip(self.before_step, self.buffers, strict=True):
            kept.copy_(buffer)

    @torch.no_grad()
    def _restore_buffers(self) -> None:
        for kept, buffer in zip(self.before_step, self.buffers, strict=True):
            buffer.copy_(kept)

    def allows(self, loss: torch.Tensor, progress: TrainingProgress, stop_requested: bool = False) -> bool:
        """True when the loss is finite on every process; otherwise counts a skipped step.

        The same reduction tells every process whether any of them was asked to stop (`stop_requested`
        here): `stop_everywhere` holds the answer, so that all stop after the same step.

        Raises:
            TrainingDiverged: the `max_bad_steps`-th non-finite loss in a row.
        """
        # Every process must take the same decisions, or the next gradient all-reduce would hang; this
        # reduction is the step's one device-host sync for both, a small price for never stepping on a NaN.
        flags = torch.stack([torch.isfinite(loss.detach()).float(), loss.new_tensor(float(stop_requested))])
        finite, stops = self.accelerator.reduce(flags.float(), "sum").tolist()
        self.stop_everywhere = stops > 0
        if finite == self.accelerator.num_processes:
            self.bad_in_a_row = 0
            return True
        self._restore_buffers()
        progress.skipped_steps += 1
        self.bad_in_a_row += 1
        self.accelerator.print(
            f"step {progress.step}: non-finite loss, step skipped ({self.bad_in_a_row} in a row)"
        )
        if self.bad_in_a_row >= self.max_bad_steps:
            raise TrainingDiverged(
                f"the loss was NaN or infinite for {self.bad_in_a_row} steps in a row "
                f"(train.max_bad_steps={self.max_bad_steps}) at step {progress.step}; "
                f"{latest_checkpoint_phrase(self.run)}. Lower optim.lr, set train.clip_grad_norm "
                "or use train.mixed_precision=bf16 (not fp16); then resume with train.resume=auto"
            )
        return False
