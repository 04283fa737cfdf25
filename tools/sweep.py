"""Pretrain a recipe under several sets of overrides, evaluate each run, print one table.

    python tools/sweep.py recipes/fashion_mnist_simclr_cpu.yaml --output-dir runs/sweep \\
        --run "recipe:" --run "LARS lr 1.0: optim.name=lars optim.lr=1.0" --common train.epochs=3

Overrides are split like a shell command line: quote one that holds spaces.

Each `--run` is `LABEL: key=value ...`; `--common` overrides apply to every run. Every run is a fresh
`python -m ssl_toolkit.pretrain` process (one at a time, so timings are not shared with a neighbour),
followed by `ssl-toolkit probe` (with `--baselines`, the first run's probe adds the raw-pixel and untrained
baselines) and `ssl-toolkit knn`. Prints a Markdown table of pretraining time, views/s, linear-probe
top-1 and AUROC and kNN top-1, and writes it with the raw figures to `OUTPUT_DIR/sweep.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssl_toolkit.run_dir import RunDirectory


def _run_name(index: int, label: str) -> str:
    # A letter first: YAML would read a name such as 0_2 as the integer 2.
    return f"run{index}_" + re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def sweep(
    recipe: str, runs: list[tuple[str, list[str]]], common: list[str], output_dir: Path, baselines: bool
) -> list[dict]:
    rows = []
    cli = [sys.executable, "-m", "ssl_toolkit.cli"]
    for index, (label, overrides) in enumerate(runs):
        name = _run_name(index, label)
        run = RunDirectory(output_dir / name)
        settings = [*common, *overrides, f"run.output_dir={output_dir}", f"run.name={name}"]
        started = time.perf_counter()
        _run([sys.executable, "-m", "ssl_toolkit.pretrain", recipe, *settings])
        wall = time.perf_counter() - started
        pretraining = run.read_summary()
        _run([*cli, "probe", str(run.path), *(["--baselines"] if baselines and index == 0 else [])])
        _run([*cli, "knn", str(run.path)])
        probe = json.loads(run.probe.read_text())
        knn = json.loads(run.knn.read_text())
        row = {
            "label": label,
            "overrides": overrides,
            "epochs": pretraining["epochs"],
            "pretrain_seconds": pretraining["seconds"],
            "wall_seconds": wall,
            "views_per_s": pretraining["views_per_s"],
            "probe_top1": probe["top1"],
            "probe_auroc": probe["auroc"],
            "knn_top1": knn["top1"],
            "feature_dim": probe["feature_dim"],
        }
        for key in ("random_init_top1", "raw_pixels_top1"):
            if key in probe:
                row[key] = probe[key]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | overrides | epochs | pretraining (s) | views/s | probe top-1 | AUROC | kNN top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        overrides = " ".join(f"`{o}`" for o in row["overrides"]) or "(the recipe)"
        lines.append(
            f"| {row['label']} | {overrides} | {row['epochs']:.1f} | {row['pretrain_seconds']:.0f} | "
            f"{row['views_per_s']:,.0f} | {100 * row['probe_top1']:.2f}% | {row['probe_auroc']:.4f} | "
            f"{100 * row['knn_top1']:.2f}% |"
        )
    baselines = rows[0]
    if "raw_pixels_top1" in baselines:
        lines.append("")
        lines.append(
            f"Same probe, same data: raw pixels {100 * baselines['raw_pixels_top1']:.2f}%, the first run's "
            f"architecture untrained {100 * baselines['random_init_top1']:.2f}%."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("--run", action="append", required=True, help='"LABEL: key=value ..." (repeatable)')
    parser.add_argument("--common", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--baselines", action="store_true", help="probe the first run with --baselines")
    args = parser.parse_args()
    runs = []
    for spec in args.run:
        label, _, overrides = spec.partition(":")
        runs.append((label.strip(), shlex.split(overrides)))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    rows = sweep(args.recipe, runs, args.common, args.output_dir, args.baselines)
    table = markdown(rows)
    print(table)
    (args.output_dir / "sweep.json").write_text(json.dumps({"rows": rows, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
