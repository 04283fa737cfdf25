"""`ssl-toolkit probe RUN_DIR`: linear probe on the frozen encoder of a pretraining run → probe.json."""

from __future__ import annotations

import time
from pathlib import Path

from ssl_toolkit.config import ConfigError
from ssl_toolkit.eval.linear_probe import evaluate_linear_probe
from ssl_toolkit.eval.run import FEATURES, RANDOM_INIT, EvaluationRun, open_run
from ssl_toolkit.run_dir import write_json

FEATURE_CHOICES = (*FEATURES, "both")
SUMMARY_KEYS = ("top1", "top5", "auroc", "features")


def run_probe(
    run_dir: str | Path | EvaluationRun,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    features: str = "backbone",
    baselines: bool = False,
    batch_size: int = 256,
    weight_decay: float | None = None,
) -> dict | None:
    """Probe the run's frozen encoder on its dataset; writes probe.json and returns its contents.

    `features`: "backbone" (h, the default), "projection" (z) or "both", which reports h at the top level
    and z under "projection". `baselines` adds `random_init_top1` (the same backbone, untrained) and the
    data kind's raw baseline (`raw_pixels_top1` for images) under the same probe. Under `accelerate launch`
    every process embeds its share of the data; the main process fits the probes, writes the file and
    returns the result, the others None. `weight_decay` fixes the probe's decay; by default it is picked
    on a validation split carved from train. `run_dir` may be an open `EvaluationRun`, whose features
    later evaluations reuse.
    """
    if weight_decay is not None and not weight_decay >= 0:
        raise ConfigError(f"--weight-decay {weight_decay} must be a number ≥ 0, e.g. 1e-4")
    if features not in FEATURE_CHOICES:
        raise ConfigError(f"--features {features!r} is not one of: {', '.join(FEATURE_CHOICES)}")
    started = time.perf_counter()
    run = open_run(run_dir, overrides, batch_size=batch_size)
    kinds = list(FEATURES) if features == "both" else [features]
    if baselines:
        kinds += [RANDOM_INIT, run.baseline]
    # Every process takes part in every extraction (a collective) before the main process fits alone.
    extracted = {kind: (run.features(kind, "train"), run.features(kind, "test")) for kind in kinds}
    if not run.is_main_process:
        return None

    def probe(kind: str) -> dict:
        train, test = extracted[kind]
        return evaluate_linear_probe(
            train, test, run.num_classes, seed=run.config.seed, device=run.device, weight_decay=weight_decay
        )

    primary = kinds[0]
    result = {**probe(primary), "features": primary, "classes": run.classes}
    if features == "both":
        result["projection"] = {**probe("projection"), "features": "projection"}
    if baselines:
        result["baselines"] = [RANDOM_INIT, run.baseline]
        for baseline in result["baselines"]:
            result[f"{baseline}_top1"] = probe(baseline)["top1"]
    result["unreadable_images"] = run.unreadable_images
    result["seconds"] = time.perf_counter() - started
    write_json(run.directory.probe, result)

    summary_keys = (*SUMMARY_KEYS, f"{RANDOM_INIT}_top1", f"{run.baseline}_top1")
    summary = {f"probe/{key}": value for key, value in result.items() if key in summary_keys}
    projection = result.get("projection", {})
    summary.update({f"probe/projection_{k}": v for k, v in projection.items() if k in SUMMARY_KEYS})
    run.publish(summary)
    return result
