"""Which config changes a resume may make: those that leave the run's trajectory as it was.

A resume continues one run. Changing the batch, the processes, the seed, the data, the model, the loss or
the optimiser would make its steps those of another run, so such changes are refused unless listed in
`train.resume_allow`; logging, checkpoint cadence and a longer (or shorter) run pass, and are recorded.
"""

from __future__ import annotations

from typing import Any

from ssl_toolkit.config import Config, ConfigError
from ssl_toolkit.config.parse import to_dict

NUM_PROCESSES = "num_processes"  # not a config key, but it changes the global batch and the peak lr
# Keys that change neither the batches, nor the views, nor the arithmetic of a step.
UNCHANGED_TRAJECTORY_SECTIONS = ("run.", "log.")
UNCHANGED_TRAJECTORY_KEYS = frozenset(
    {
        "data.num_workers",  # every item's views are seeded by (seed, epoch, index), not by the worker
        "data.download",
        "train.epochs",
        "train.max_steps",
        "train.checkpoint_every",
        "train.resume",
        "train.resume_allow",
        "train.max_bad_steps",
        "train.collective_timeout_s",
        "train.compile",  # the same arithmetic, fused
        "train.channels_last",  # the same arithmetic, another memory layout
    }
)


def flat_config(config: Config) -> dict[str, Any]:
    """`section.key` → value for every key (loss options as `loss.<option>`), and the top-level seed."""
    flat: dict[str, Any] = {}
    for section, values in to_dict(config).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def changed_keys(
    saved: Config, saved_processes: int, new: Config, new_processes: int
) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs between the checkpoint's run and this one: key → (old, new)."""
    old, current = flat_config(saved), flat_config(new)
    old[NUM_PROCESSES], current[NUM_PROCESSES] = saved_processes, new_processes
    return {
        key: (old.get(key), current.get(key))
        for key in sorted(old.keys() | current.keys())
        if old.get(key) != current.get(key)
    }


def changes_trajectory(key: str) -> bool:
    return not (key.startswith(UNCHANGED_TRAJECTORY_SECTIONS) or key in UNCHANGED_TRAJECTORY_KEYS)


def check_resume(changes: dict[str, tuple[Any, Any]], allowed: list[str], checkpoint: str) -> None:
    """Raise ConfigError naming each refused change (old → new); `allowed` lists the keys let through."""
    refused = {
        key: values for key, values in changes.items() if changes_trajectory(key) and key not in allowed
    }
    if not refused:
        return
    listed = "; ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in refused.items())
    raise ConfigError(
        f"resuming {checkpoint} would change the run: {listed}. Start a new run (another run.name), or "
        f"resume anyway with train.resume_allow=[{','.join(refused)}]"
    )


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in changes.items()) or "nothing"
