"""The run's progress: the step counter and the count of skipped steps, saved as JSON in each checkpoint."""

from __future__ import annotations


class TrainingProgress:
    """Steps done (`step`, counted from 1) and steps skipped for a non-finite loss (`skipped_steps`)."""

    def __init__(self, step: int = 0, skipped_steps: int = 0) -> None:
        self.step = step
        self.skipped_steps = skipped_steps
        self.checkpoint: str | None = None  # the checkpoint folder this session resumed from, if any

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
