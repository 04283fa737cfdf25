"""What a run reports while it trains: trackers, metrics.jsonl, the console, pictures of its views.

One rule (`evaluation_due`) decides when a periodic evaluation runs; the picture of the views goes with
it (and with the session's first step), and a record is logged every `log.every` steps, at the first and
the last step, and with every evaluation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ssl_toolkit.config import Config
from ssl_toolkit.process.memory import peak_memory_mb
from ssl_toolkit.run_dir import RunDirectory
from ssl_toolkit.tracking import init_trackers
from ssl_toolkit.training.batch_statistics import view_pair_metrics
from ssl_toolkit.training.online_probe import OnlineLinearProbe


class RunLog:
    """The reporting of one pretraining session (a resumed run starts a new one).

    Args:
        accelerator: the run's accelerator (trackers, reductions, the main process).
        config: the run's config (`log.*`, the trackers' hyperparameters).
        run: the run directory (metrics.jsonl, pretrain.json, unreadable inputs).
        steps_per_epoch: batches in an epoch, for the logged epoch.
        total_steps: the run's last step.
        start_step: the step this session starts from (0, or the resumed checkpoint's).
        view_summary: a batch's views → an RGB uint8 image (3, H, W) for the dashboards, or None.
        online_probe: the online linear probe, whose last training batch each record reports, or None.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: Config,
        run: RunDirectory,
        steps_per_epoch: int,
        total_steps: int,
        start_step: int,
        view_summary: Callable[[list[torch.Tensor]], torch.Tensor | None],
        *,
        online_probe: OnlineLinearProbe | None = None,
    ):
        self.accelerator, self.config, self.run = accelerator, config, run
        self.online_probe = online_probe
        self.last_evaluation: dict = {}  # the latest periodic evaluation's figures, for pretrain.json
        self.steps_per_epoch, self.total_steps, self.start_step = steps_per_epoch, total_steps, start_step
        self.view_summary = view_summary
        init_trackers(accelerator, config, run)
        # A bar on an interactive terminal, on the main process only; in logs (CI, SLURM) plain lines suffice.
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="pretraining",
            disable=not (accelerator.is_local_main_process and sys.stderr.isatty()),
            dynamic_ncols=True,
        )
        self.started = time.perf_counter()
        self.samples, self.samples_since_log, self.last_log = 0, 0, self.started
        self.last_loss: float | None = None

    def evaluation_due(self, step: int) -> bool:
        """Whether the periodic evaluation (`log.knn_every`) runs after step `step` (counted from 1)."""
        every = self.config.log.knn_every
        return every > 0 and (step % every == 0 or step == self.total_steps)

    def record_due(self, step: int) -> bool:
        """Whether step `step` is logged (its gradient norm is then measured too)."""
        return self.evaluation_due(step) or step % self.config.log.every == 0 or step in (1, self.total_steps)

    def after_step(
        self,
        step: int,
        *,
        samples: int,
        loss: torch.Tensor,
        lr: float,
        grad_norm: torch.Tensor | None,
        skipped_steps: int,
        embeddings: list[torch.Tensor],
        views: list[torch.Tensor],
        evaluate: Callable[[], dict] | None,
    ) -> None:
        """Account for finished step `step` of `samples` samples per process; log it where due.

        Runs on every process: the loss reduction and the evaluation are collectives.
        """
        self.samples += samples * self.accelerator.num_processes
        self.samples_since_log += samples * self.accelerator.num_processes
        self.bar.update(1)
        evaluation_due = self.evaluation_due(step)
        if step == self.start_step + 1 or evaluation_due:  # the views, with each periodic evaluation
            self._log_views(views, step)
        if not self.record_due(step):
            return
        now = time.perf_counter()
        record = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": self.accelerator.reduce(loss.detach(), reduction="mean").item(),
            "lr": lr,
            "samples_per_s": self.samples_since_log / max(now - self.last_log, 1e-9),
            "grad_norm": float(grad_norm),
            "skipped_steps": skipped_steps,
            "unreadable_images": self.run.count_unreadable_inputs(),
            **view_pair_metrics(*embeddings[:2]),
        }
        if self.online_probe is not None:
            record.update(self.online_probe.metrics())
        if evaluation_due and evaluate is not None:
            self.last_evaluation = {"evaluation_step": step, **evaluate()}
            record.update(self.last_evaluation)
        self.samples_since_log, self.last_log, self.last_loss = 0, now, record["loss"]
        self.accelerator.log(record, step=step)
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.3g}")
            line = f"step {step}/{self.total_steps}  loss {record['loss']:.4f}  lr {lr:.4g}  "
            line += f"{record['samples_per_s']:.0f} samples/s"
            line += f"  kNN top-1 {record['knn_top1']:.4f}" if "knn_top1" in record else ""
            if "online_probe_top1" in record:
                line += f"  online probe top-1 {record['online_probe_top1']:.4f}"
            if "rankme" in record:
                line += f"  RankMe {record['rankme']:.1f}"
            self.bar.write(line)

    def _log_views(self, views: list[torch.Tensor], step: int) -> None:
        trackers = [t for t in self.accelerator.trackers if hasattr(t, "log_images")]
        if not trackers or not self.accelerator.is_main_process:
            return
        picture = self.view_summary(views)
        if picture is None:
            return
        for tracker in trackers:
            tracker.log_images({"views": picture.unsqueeze(0)}, step=step)

    def close(self) -> None:
        """End the session's reporting: the progress bar and the trackers (their files flushed)."""
        self.bar.close()
        self.accelerator.end_training()

    def _peak_memory(self) -> dict:
        """`peak_memory_mb` (MiB), the largest over the processes, and `peak_memory_kind`: on CUDA the most
        memory PyTorch's tensors held on the process's GPU (`cuda_allocated`), elsewhere the process's
        resident-set high-water mark (`cpu_max_rss`, DataLoader workers not included). A collective."""
        device = self.accelerator.device
        megabytes, kind = peak_memory_mb(device)
        # Accelerate's reduce has sum and mean but no max; a gather works on gloo and NCCL alike. float32
        # (exact to the MiB up to 16 TiB) because some devices (MPS) have no float64.
        every_process = self.accelerator.gather(torch.tensor([megabytes], dtype=torch.float32, device=device))
        return {"peak_memory_mb": float(every_process.max()), "peak_memory_kind": kind}

    def finish(self, step: int, views_per_sample: int) -> dict:
        """Close the session's reporting; writes and returns pretrain.json's summary (main process).

        Runs on every process: the peak memory is gathered from all of them."""
        seconds = time.perf_counter() - self.started
        summary = {
            "seconds": seconds,
            "steps": step,
            "epochs": step / self.steps_per_epoch,
            "steps_this_session": step - self.start_step,
            "samples_per_s": self.samples / max(seconds, 1e-9),
            "views_per_s": self.samples * views_per_sample / max(seconds, 1e-9),
            "final_loss": self.last_loss,
            **self._peak_memory(),
            **self.last_evaluation,  # kNN and online-probe top-1 of this session's last evaluation
        }
        if self.accelerator.is_main_process:
            self.run.write_summary(summary)
        self.accelerator.print(f"done in {seconds:.1f}s; encoder written to {self.run.path}")
        self.close()
        return summary
