"""`accelerate launch -m ssl_toolkit.pretrain RECIPE [section.key=value ...]` (or plain `python -m`).

RECIPE is a YAML file or the name of a packaged recipe (`ssl-toolkit recipes` lists them). `pretrain`
builds its parts through `ssl_toolkit.build`, then runs one loop for every loss and every kind of data.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from ssl_toolkit import build, distributed
from ssl_toolkit.config import CommandLineParser, Config, add_recipe_arguments, load_config, save_config
from ssl_toolkit.encoder_file import save_run_encoder
from ssl_toolkit.files import writing
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.process.launch import stop_with_parent
from ssl_toolkit.process.memory import limit_memory_from_environment
from ssl_toolkit.process.outcome import (
    Outcome,
    clear_outcome,
    rank_outcome_path,
    run_entry_point,
    write_outcome,
)
from ssl_toolkit.process.status import RunFailure, Status, as_failure
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.training import run_claim
from ssl_toolkit.training.checkpoint import resumable_batches, resume, save_checkpoint
from ssl_toolkit.training.checkpoint_files import latest_checkpoint_phrase
from ssl_toolkit.training.guard import NonFiniteGuard
from ssl_toolkit.training.objective import ContrastiveObjective, train_step
from ssl_toolkit.training.progress import TrainingProgress
from ssl_toolkit.training.run_log import RunLog
from ssl_toolkit.training.stop_signals import StopSignals, TrainingInterrupted


def pretrain(config: Config) -> Path:
    """Run self-supervised (or supervised contrastive) pretraining as configured; returns the run directory.

    Writes `config.yaml`, `metrics.jsonl`, `checkpoints/` and, at the end, `encoder.safetensors` and
    `pretrain.json` (see `ssl_toolkit.run_dir`). The run directory is locked for the run's life.

    Raises:
        ConfigError: a bad config, a used or locked run directory, a resume that would change the run.
        TrainingDiverged: too many non-finite losses, or non-finite weights at a checkpoint.
        TrainingInterrupted: a stop signal (after a checkpoint) or a peer process that stopped answering.
        StorageFull: the disk filled up (the previous checkpoint is intact).
        OutOfMemory: an allocation failed on the accelerator or the host (the message says what to lower).
        Each carries `step`, the last step completed; the run directory's outcome.json says the same.
    """
    run = RunDirectory(config.run_dir)
    accelerator = build.accelerator(config, run)
    lock = run_claim.claim(accelerator, config, run)
    if accelerator.is_main_process:  # the last session's account: a resumed run writes its own
        clear_outcome(run.outcome)
    accelerator.wait_for_everyone()
    progress = TrainingProgress()
    try:
        with StopSignals() as signals:
            _train(config, run, accelerator, signals, progress)
    except BaseException as error:
        failure = _as_failure(error, config, run)
        _leave_outcome(run, accelerator, Outcome.of_error(failure or error, progress.step))
        if failure is None:  # a bug: its own traceback
            raise
        failure.step = progress.step  # the outcome the entry point writes says where the run got to
        if failure is error:
            raise
        raise failure from (None if isinstance(failure, TrainingInterrupted) else error)
    else:
        _leave_outcome(run, accelerator, Outcome(Status.OK, step=progress.step))
    finally:
        lock.release()
    return run.path


def _as_failure(error: BaseException, config: Config, run: RunDirectory) -> RunFailure | None:
    """`error` as the RunFailure the run ends with: a peer that stopped answering is an interruption, an
    allocation failure is OutOfMemory naming what to lower; None for a bug."""
    if not isinstance(error, RunFailure) and isinstance(error, RuntimeError) and distributed.lost_peer(error):
        return TrainingInterrupted(
            f"another process stopped answering for train.collective_timeout_s="
            f"{config.train.collective_timeout_s:g} s (stalled, or dead: see its log); "
            f"{latest_checkpoint_phrase(run)}; resume with train.resume=auto"
        )
    return as_failure(error, LOWER_MEMORY_ADVICE)


def _leave_outcome(run: RunDirectory, accelerator: Accelerator, outcome: Outcome) -> None:
    """The run directory's outcome.json from the main process; another process writes its own only when it
    failed otherwise (it may be the one that knows why the run stopped)."""
    if accelerator.is_main_process:
        write_outcome(run.outcome, outcome)
    elif outcome.status is not Status.OK:
        write_outcome(rank_outcome_path(run.outcome, accelerator.process_index), outcome)


def _train(
    config: Config,
    run: RunDirectory,
    accelerator: Accelerator,
    signals: StopSignals,
    progress: TrainingProgress,
) -> None:
    set_seed(config.seed)  # before building the model, so the seed decides its initial weights
    kind = create_data_kind(config, run)
    dataset = kind.pretraining_dataset()
    data = kind.training_data(dataset, accelerator.device)
    loader, items = build.train_loader(config, data, accelerator.num_processes)
    encoder, trained_encoder = build.encoders(config, kind, accelerator.num_processes, accelerator.device)
    objective = ContrastiveObjective(trained_encoder, build.loss(config, dataset))
    optimizer, peak_lr = build.optimizer(config, objective, accelerator.num_processes)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    # Augmentations draw from the global generator (also the batch views and each worker's base seed):
    # without a per-process seed every process would crop and jitter its samples identically.
    set_seed(config.seed, device_specific=True)
    schedule = build.lr_schedule(config, len(loader), peak_lr)
    resume(accelerator, run, config, progress)
    if accelerator.is_main_process:
        with writing(run.config):
            save_config(config, run.config)
    step_fn = train_step(accelerator, objective, config.train.grad_cache_chunk)
    guard = NonFiniteGuard(accelerator, run, config.train.max_bad_steps, objective)
    probe = build.online_probe(config, dataset, accelerator, encoder.feature_dim)
    if probe is not None and progress.checkpoint is not None and not probe.restore(Path(progress.checkpoint)):
        accelerator.print(f"{progress.checkpoint} holds no online probe; it starts again from zero weights")
    evaluate = build.online_evaluation(config, kind, accelerator, encoder.backbone, probe)
    precision_warning = build.cpu_bf16_warning(config.train.mixed_precision, accelerator.device)
    if precision_warning:
        accelerator.print(precision_warning)
    accelerator.print(
        f"pretraining {config.model.backbone} on {config.data.name}: {len(dataset)} samples, global batch "
        f"{config.train.batch_size * accelerator.num_processes} ({accelerator.num_processes} processes), "
        f"{schedule.total_steps} steps, peak lr {peak_lr:.4g}, run directory {run.path}"
    )
    log = RunLog(
        accelerator,
        config,
        run,
        len(loader),
        schedule.total_steps,
        progress.step,
        kind.view_summary,
        online_probe=probe,
    )
    objective.train()
    for inputs, targets in resumable_batches(accelerator, loader, items, progress, schedule.total_steps):
        lr = schedule.apply(optimizer, progress.step)
        views = kind.prepare_batch(data.views(inputs))
        guard.remember_buffers()
        # forward and backward (plain or gradient-cached), then the batch's embeddings for the statistics
        loss, embeddings, features = step_fn(views, targets if config.loss.supervised else None)
        # A non-finite loss on any process: drop the gradients (the same reduction shares stop signals).
        if not guard.allows(loss, progress, signals.requested):
            optimizer.zero_grad(set_to_none=True)
            continue
        step = progress.step + 1
        # clip the gradient, and measure its norm where the step is logged (an infinite bound clips nothing)
        grad_norm = None
        if config.train.clip_grad_norm is not None or log.record_due(step):
            bound = config.train.clip_grad_norm or math.inf
            grad_norm = accelerator.clip_grad_norm_(objective.parameters(), bound)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # free the gradients' memory before logging
        if probe is not None:  # on the detached features, after the encoder's step: it changes nothing there
            probe.step(features, targets)
        progress.step = step
        log.after_step(
            step,
            samples=len(targets),
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            skipped_steps=progress.skipped_steps,
            embeddings=embeddings,
            views=views,
            evaluate=evaluate,
        )
        if guard.stop_everywhere:
            checkpoint = save_checkpoint(accelerator, run, progress, objective, config, probe)
            log.close()
            raise TrainingInterrupted(
                f"stopped by a signal after step {step}; checkpoint {checkpoint} written: continue with "
                "train.resume=auto"
            )
        if step % config.train.checkpoint_every == 0 and step < schedule.total_steps:
            save_checkpoint(accelerator, run, progress, objective, config, probe)

    save_checkpoint(accelerator, run, progress, objective, config, probe)
    if accelerator.is_main_process:
        with writing(run.encoder):
            save_run_encoder(kind, encoder, run.encoder, step=progress.step)
    log.finish(progress.step, config.views_per_sample)


# What a run short of memory can lower, named in its one-line error.
LOWER_MEMORY_ADVICE = (
    "lower train.batch_size, set train.grad_cache_chunk to fewer samples than the batch (or lower it), "
    "lower data.image_size, or use train.mixed_precision=bf16 (or fp16)"
)


def main(argv: list[str] | None = None) -> int:
    """`python -m ssl_toolkit.pretrain RECIPE [section.key=value ...]`; the exit code is `ExitCode`'s: 0 done,
    2 a bad config or input or a full disk, 3 the loss diverged, 4 stopped by a signal or a lost peer with the
    run resumable, 5 short of memory."""
    parser = CommandLineParser(prog="ssl_toolkit.pretrain", description=__doc__)
    args = add_recipe_arguments(parser).parse_args(argv)
    stop_with_parent()
    limit_memory_from_environment()  # a study's memory_limit_mb, counted from the libraries loaded now
    return run_entry_point(
        lambda: pretrain(load_config(args.recipe, args.overrides)), memory_advice=LOWER_MEMORY_ADVICE
    )


if __name__ == "__main__":
    sys.exit(main())
