"""What makes a checkpoint folder resumable: `progress.json`, describing the step and every file.

A folder whose progress.json is missing, or whose files differ from the sizes and SHA-256 digests it lists,
is never loaded: nothing in it is unpickled or read into the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from ssl_toolkit.config import Config, save_config
from ssl_toolkit.files import json_text
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training.progress import TrainingProgress

PROGRESS_FILE = "progress.json"
CONFIG_FILE = "config.yaml"  # the config of the run that wrote it, which a resume is checked against
FORMAT = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_checkpoint(folder: Path, progress: TrainingProgress, num_processes: int, config: Config) -> None:
    """Write the run's config and, last, progress.json with every file's size and digest into `folder`."""
    save_config(config, folder / CONFIG_FILE)
    # safetensors creates its files 0600 whatever the umask: give them the mode config.yaml was created with.
    ordinary_mode = stat.S_IMODE((folder / CONFIG_FILE).stat().st_mode)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, ordinary_mode)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file()
    }
    description = {"format": FORMAT, **progress.state_dict(), "num_processes": num_processes, "files": files}
    (folder / PROGRESS_FILE).write_text(json_text(description, indent=2) + "\n")


def read_description(folder: Path) -> dict:
    """progress.json of a checkpoint that `checkpoint_problem` passed."""
    return json.loads((folder / PROGRESS_FILE).read_text())


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (None when it can): progress.json and every file it lists."""
    try:
        description = read_description(folder)
        files = description["files"]
        int(description["step"])
        int(description["num_processes"])
        listed = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()]
    except FileNotFoundError:
        return f"it has no {PROGRESS_FILE} (an unfinished save, or written by an older ssl_toolkit)"
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
        return f"its {PROGRESS_FILE} is unreadable ({type(error).__name__}: {error})"
    for name, size, sha256 in listed:
        if Path(name).name != name:  # a file of the folder, never a path out of it
            return f"its {PROGRESS_FILE} lists {name!r}, which is not a file of the checkpoint"
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size or _sha256(path) != sha256:
            return f"{name} is corrupt (its size or SHA-256 differs from {PROGRESS_FILE}'s)"
    return None


def latest_checkpoint_phrase(run: RunDirectory) -> str:
    """'the last good checkpoint is PATH', naming the newest checkpoint that verifies, for messages."""
    for folder in reversed(run.checkpoint_dirs()):
        if checkpoint_problem(folder) is None:
            return f"the last good checkpoint is {folder}"
    return "no good checkpoint was written yet"
