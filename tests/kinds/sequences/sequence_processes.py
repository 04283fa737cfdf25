"""A sequence pretraining run whose every step is recorded, for the 2-process invariance test.

Run under a launcher (`accelerate launch THIS_FILE OUT_DIR [OVERRIDE ...]`): each process pretrains the
tiny sequence config for STEPS steps and writes OUT_DIR/rank<R>.pt with, per step, its padded views, its
loss, the weights before the step and the gradients after the backward (all-reduced over the processes).
`sequence_config(out_dir)` is the config both this run and the single-process reference use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' helpers, as under pytest

from pretraining_runs import QUICKSTART, SEQUENCE_RUN

from ssl_toolkit.config import load_config

STEPS = 2
BATCH = 16  # per process


def sequence_config(out_dir: Path, *overrides: str):
    return load_config(
        QUICKSTART,
        [*SEQUENCE_RUN, f"train.batch_size={BATCH}", f"train.max_steps={STEPS}",
         f"run.output_dir={out_dir}", "run.name=recorded", *overrides],
    )  # fmt: skip


def main(out_dir: Path, overrides: list[str]) -> None:
    from ssl_toolkit import pretrain as pretrain_module

    real_train_step = pretrain_module.train_step
    recorded = []

    def recording_train_step(accelerator, objective, grad_cache_chunk):
        step = real_train_step(accelerator, objective, grad_cache_chunk)
        unwrapped = accelerator.unwrap_model(objective)

        def record(views, class_labels):
            before = {name: value.detach().clone() for name, value in unwrapped.state_dict().items()}
            loss, embeddings, features = step(views, class_labels)
            grads = {name: p.grad.detach().clone() for name, p in unwrapped.named_parameters()}
            views_saved = [(dict(view.fields), view.lengths.clone()) for view in views]
            recorded.append({"views": views_saved, "loss": loss.item(), "state": before, "grads": grads})
            return loss, embeddings, features

        return record

    pretrain_module.train_step = recording_train_step
    pretrain_module.pretrain(sequence_config(out_dir, *overrides))
    torch.save(recorded, out_dir / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
