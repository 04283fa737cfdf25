"""Every evaluation protocol on one finished run, side by side, with the time each took → a Markdown table.

Runs, each as its own `ssl-toolkit` process (as a user would), on the run's encoder:
  L-BFGS probe          ssl-toolkit probe RUN                         (frozen h of unaugmented images)
  SGD probe             ssl-toolkit probe RUN --protocol sgd          (crops and flips, frozen backbone)
  kNN                   ssl-toolkit knn RUN
  fine-tuning           ssl-toolkit finetune RUN --label-fraction F   (for each F of --label-fractions)
and reads the online probe's last top-1 from the run's pretrain.json. The L-BFGS probe runs first with an
empty feature cache, so its time includes embedding the train and test splits; kNN then reads the cache.

  python tools/evaluation_protocols.py runs/fashion_mnist_simclr_cpu --sgd-epochs 10

writes `evaluation_protocols.json` into the run directory beside the commands' own result files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ssl_toolkit.files import write_json
from ssl_toolkit.run_dir import RunDirectory


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    print(result.stdout.strip(), flush=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sgd-epochs", type=int, default=100, help="the SGD probe's epochs (default 100)")
    parser.add_argument("--label-fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--num-workers", type=int, default=1, help="crop workers of the SGD protocols")
    args = parser.parse_args(argv)
    run = RunDirectory(args.run_dir)
    cli = [sys.executable, "-m", "ssl_toolkit.cli"]
    workers = ["--num-workers", str(args.num_workers)]
    shutil.rmtree(run.features, ignore_errors=True)  # the L-BFGS probe's time includes the embedding
    rows = []

    seconds = _timed([*cli, "probe", str(run.path)])
    probe = json.loads(run.probe.read_text())
    rows.append(
        ("L-BFGS linear probe, frozen h", probe["top1"], probe.get("auroc"), seconds, "embeds both splits")
    )

    seconds = _timed(
        [*cli, "probe", str(run.path), "--protocol", "sgd", "--epochs", str(args.sgd_epochs), *workers]
    )
    sgd = json.loads(run.probe_result("linear", "sgd").read_text())
    rows.append(
        (
            f"SGD linear probe, {args.sgd_epochs} epochs of crops + flips",
            sgd["top1"],
            sgd.get("auroc"),
            seconds,
            "",
        )
    )

    summary = run.read_summary()
    if "online_probe_top1" in summary:
        step = summary.get("evaluation_step")
        note = f"trained during pretraining; scored at step {step}"
        rows.append(
            ("online linear probe, end of pretraining", summary["online_probe_top1"], None, None, note)
        )

    seconds = _timed([*cli, "knn", str(run.path)])
    knn = json.loads(run.knn.read_text())
    rows.append(("kNN (k = 200, T = 0.07), frozen h", knn["top1"], None, seconds, "cached features"))

    for fraction in args.label_fractions:
        seconds = _timed([*cli, "finetune", str(run.path), "--label-fraction", f"{fraction:g}", *workers])
        result = json.loads(run.finetune.read_text())[f"{fraction:g}"]
        label = f"fine-tuning, {100 * fraction:g}% of the labels ({result['num_train']:,} images)"
        epochs = result["schedule"]["epochs"]
        rows.append((label, result["top1"], result.get("auroc"), seconds, f"{epochs} epochs"))

    lines = ["| protocol | top-1 | AUROC | seconds | note |", "|---|---|---|---|---|"]
    for name, top1, auroc, seconds, note in rows:
        auroc_text = f"{auroc:.4f}" if auroc is not None else "–"
        seconds_text = f"{seconds:.0f}" if seconds is not None else "–"
        lines.append(f"| {name} | {100 * top1:.2f}% | {auroc_text} | {seconds_text} | {note} |")
    print("\n".join(lines))
    write_json(
        run.path / "evaluation_protocols.json",
        [dict(zip(("protocol", "top1", "auroc", "seconds", "note"), row, strict=True)) for row in rows],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
