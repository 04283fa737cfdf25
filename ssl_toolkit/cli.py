"""The `ssl-toolkit` command: `pretrain`, `probe`, `knn`, `evaluate` (both), `finetune`, `plot`, `export`,
`study`, `recipes`.

Evaluation commands also run under `accelerate launch -m ssl_toolkit.cli probe RUN_DIR`: every process
embeds its share of the data and the main process reports. Each command imports what it needs when it
runs, so `ssl-toolkit --version` and `ssl-toolkit recipes` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_toolkit import __version__
from ssl_toolkit.config import CommandLineParser, ConfigError, add_recipe_arguments, packaged_recipes
from ssl_toolkit.eval.defaults import (
    FINETUNE_EPOCHS,
    FINETUNE_EPOCHS_FEW_LABELS,
    FINETUNE_LR,
    KNN_K,
    KNN_TEMPERATURE,
    SGD_PROBE_EPOCHS,
    SGD_PROBE_LR,
    finetune_epochs,
)
from ssl_toolkit.process.outcome import run_entry_point
from ssl_toolkit.process.signals import raising_on_stop_signals


def _schedule(args: argparse.Namespace, epochs: int, lr: float):
    """The SGD schedule the options give, with `epochs` and `lr` where they are not given."""
    from ssl_toolkit.eval.classifier_training import ClassifierSchedule

    given = {name: getattr(args, name) for name in (*SGD_OPTIONS, "weight_decay")}
    given = {name: value for name, value in given.items() if value is not None}
    return ClassifierSchedule(**{"epochs": epochs, "lr": lr, **given})


def _probe(args: argparse.Namespace) -> int:
    from ssl_toolkit.eval.probe import run_probe
    from ssl_toolkit.eval.sgd_probe import SGD_PROBE_SCHEDULE

    sgd_options = [f"--{name.replace('_', '-')}" for name in SGD_OPTIONS if getattr(args, name) is not None]
    if args.protocol != "sgd" and sgd_options:
        raise ConfigError(f"{', '.join(sgd_options)}: options of --protocol sgd; add --protocol sgd")
    options = {}
    if args.protocol == "sgd":
        options["schedule"] = _schedule(args, SGD_PROBE_SCHEDULE.epochs, SGD_PROBE_SCHEDULE.lr)
    else:
        options["weight_decay"] = args.weight_decay
    result = run_probe(
        args.run_dir,
        args.overrides,
        features=args.features,
        baselines=args.baselines,
        model=args.model,
        folds=args.folds,
        protocol=args.protocol,
        **options,
    )
    if result is not None:  # the main process
        _print_probe(args.run_dir, result)
    return 0


SGD_OPTIONS = ("epochs", "lr", "batch_size", "min_scale", "num_workers")  # and --weight-decay
PROBE_TITLES = {
    "lbfgs": "linear probe (L-BFGS, frozen features)",
    "sgd": "linear probe (SGD on augmented images, frozen backbone)",
    "boosting": "gradient-boosting probe",
}


def _print_probe(run_dir: str, result: dict) -> None:
    from ssl_toolkit.run_dir import RunDirectory

    def line(label: str, report: dict, folds: dict | None) -> str:
        top5 = f"   top-5 {100 * report['top5']:.2f}%" if "top5" in report else ""
        text = f"  {label:<26}top-1 {100 * report['top1']:.2f}%{top5}   AUROC {report['auroc']:.4f}"
        if folds is not None:
            text += (
                f"   {folds['folds']} folds: top-1 {100 * folds['top1_mean']:.2f} ± "
                f"{100 * folds['top1_std']:.2f}%, AUROC {folds['auroc_mean']:.4f} ± {folds['auroc_std']:.4f}"
            )
        return text

    model, protocol = result.get("model", "linear"), result.get("protocol", "lbfgs")
    title = PROBE_TITLES[protocol]
    lines = [f"{title} on {run_dir} ({result['features']} features, dim {result['feature_dim']}):"]
    lines.append(line("pretrained encoder", result, result.get("cross_validation")))
    if "rankme" in result:
        lines[-1] += f"   RankMe {result['rankme']:.1f}"
    if protocol == "sgd":
        lines[-1] += f"   ({result['schedule']['epochs']} epochs, {result['seconds']:.0f} s)"
    if "projection" in result:
        projection = result["projection"]
        label = f"projection z (dim {projection['feature_dim']})"
        lines.append(line(label, projection, projection.get("cross_validation")))
    labels = {"random_init": "same backbone, untrained"}  # the data kind's raw baseline reads as its name
    for baseline in result.get("baselines", []):
        report = {"top1": result[f"{baseline}_top1"], "auroc": result[f"{baseline}_auroc"]}
        label = labels.get(baseline, baseline.replace("_", " "))
        lines.append(line(label, report, result.get(f"{baseline}_cross_validation")))
    lines.append(f"  written to {RunDirectory(run_dir).probe_result(model, protocol)}")
    print("\n".join(lines))


def _knn(args: argparse.Namespace) -> int:
    from ssl_toolkit.eval.knn import run_knn

    result = run_knn(
        args.run_dir, args.overrides, features=args.features, k=args.k, temperature=args.temperature
    )
    if result is not None:
        _print_knn(args.run_dir, result)
    return 0


def _print_knn(run_dir: str, result: dict) -> None:
    top5 = f", top-5 {100 * result['top5']:.2f}%" if "top5" in result else ""
    print(
        f"kNN on {run_dir} ({result['features']} features, k={result['k']}, "
        f"T={result['temperature']}): top-1 {100 * result['top1']:.2f}%{top5}; "
        f"written to {run_dir}/knn.json"
    )


def _evaluate(args: argparse.Namespace) -> int:
    """The probe and kNN in one process: the run opens and its data is embedded once for both."""
    from ssl_toolkit.eval.knn import run_knn
    from ssl_toolkit.eval.probe import run_probe
    from ssl_toolkit.eval.run import EvaluationRun

    run = EvaluationRun(args.run_dir, args.overrides)
    for evaluation in dict.fromkeys(args.evaluations):
        if evaluation in ("probe", "boosting"):
            model = "linear" if evaluation == "probe" else "boosting"
            decay = args.weight_decay if model == "linear" else None
            result = run_probe(run, features=args.features, weight_decay=decay, model=model)
            if result is not None:
                _print_probe(args.run_dir, result)
        else:
            result = run_knn(run, features=args.features)
            if result is not None:
                _print_knn(args.run_dir, result)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ssl_toolkit.eval.maps import METHOD_TITLES, run_plot

    path = run_plot(
        args.run_dir,
        args.overrides,
        features=args.features,
        method=args.method,
        max_points=args.max_points,
        perplexity=args.perplexity,
        neighbours=args.neighbours,
    )
    if path is not None:
        print(f"{METHOD_TITLES[args.method]} map written to {path}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from ssl_toolkit.eval.finetune import run_finetune

    schedule = _schedule(args, finetune_epochs(args.label_fraction), FINETUNE_LR)
    result = run_finetune(args.run_dir, args.overrides, label_fraction=args.label_fraction, schedule=schedule)
    if result is not None:
        from ssl_toolkit.run_dir import RunDirectory

        print(
            f"fine-tuned on {100 * args.label_fraction:g}% of the labels ({result['num_train']} images, "
            f"{result['schedule']['epochs']} epochs, {result['seconds']:.0f} s) of {args.run_dir}: "
            f"top-1 {100 * result['top1']:.2f}%   AUROC {result['auroc']:.4f}; "
            f"written to {RunDirectory(args.run_dir).finetune}"
        )
    return 0


def _add_sgd_options(parser: argparse.ArgumentParser, epochs: str, lr: str) -> None:
    parser.add_argument(
        "--epochs", type=int, help=f"passes over the labelled train images (default {epochs})"
    )
    parser.add_argument(
        "--lr", type=float, help=f"learning rate at batch 256, scaled linearly (default {lr})"
    )
    parser.add_argument("--batch-size", type=int, help="images per step per process (default 256)")
    parser.add_argument(
        "--min-scale", type=float, help="smallest random-crop area, a fraction (default 0.08)"
    )
    parser.add_argument("--num-workers", type=int, help="DataLoader workers that crop (default 0)")


def _export(args: argparse.Namespace) -> int:
    from ssl_toolkit.export import export_encoder, loading_code

    path = export_encoder(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    library = {"timm": "plain timm", "hf": "timm", "onnx": "onnxruntime", "torchscript": "torch"}[args.format]
    print(f"wrote the backbone of {args.run_dir} (h, no projection head) as {args.format} to {path}")
    print(f"load it with {library}:\n  {loading_code(path, args.format)}")
    if args.format == "hf":
        print(f"publish it:\n  huggingface_hub.upload_folder(repo_id='USER/REPO', folder_path={str(path)!r})")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from ssl_toolkit.pretrain import main as pretrain_main

    return pretrain_main([args.recipe, *args.overrides])


def _study(args: argparse.Namespace) -> int:
    from ssl_toolkit.study.runner import StudyRunner, run_study
    from ssl_toolkit.study.spec import load_study

    study = load_study(args.study)
    directory = args.output_dir or Path("runs") / "studies" / study.name
    if args.dry_run:
        StudyRunner(study, directory).dry_run()
    else:  # StudyInterrupted: exit code 4, rerun to go on
        run_study(study, directory, retry_failed=args.retry_failed)
    return 0


def _recipes(args: argparse.Namespace) -> int:
    """Each packaged recipe's name and the first line of its comment."""
    recipes = packaged_recipes()
    width = max(map(len, recipes))
    for name, path in sorted(recipes.items()):
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        print(f"{name:<{width}}  {first.lstrip('# ').strip()}")
    print(
        f"\n{len(recipes)} recipes in {next(iter(recipes.values())).parent}; run one with "
        "`ssl-toolkit pretrain NAME [section.key=value ...]`"
    )
    return 0


def _evaluation_parser(
    commands, name: str, help_text: str, feature_choices: list[str]
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("run_dir", help="run directory written by pretraining, e.g. runs/quickstart")
    parser.add_argument("overrides", nargs="*", help="section.key=value applied to the run's config")
    parser.add_argument(
        "--features",
        default="backbone",
        choices=feature_choices,
        help="backbone: pre-projection h (default); projection: z",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="ssl-toolkit", description="Self-supervised pretraining and evaluation.")
    parser.add_argument("--version", action="version", version=f"ssl-toolkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = add_recipe_arguments(commands.add_parser("pretrain", help="pretrain an encoder from a recipe"))
    pretrain.set_defaults(handler=_pretrain)
    commands.add_parser("recipes", help="list the packaged recipes").set_defaults(handler=_recipes)
    study = commands.add_parser("study", help="run a grid of runs × seeds and report mean ± std tables")
    study.add_argument("study", help="study YAML file (see ssl_toolkit/study/spec.py, recipes/studies/)")
    study.add_argument("--output-dir", type=Path, help="where results go (default runs/studies/STUDY_NAME)")
    study.add_argument("--dry-run", action="store_true", help="print every run's commands, run nothing")
    study.add_argument("--retry-failed", action="store_true", help="run the failed (cell, seed) pairs again")
    study.set_defaults(handler=_study)
    probe = _evaluation_parser(
        commands,
        "probe",
        "linear probe on a run's frozen features → probe.json",
        ["backbone", "projection", "both"],
    )
    probe.add_argument(
        "--baselines",
        action="store_true",
        help="also probe the untrained backbone and the raw features (pixels; per-client aggregates)",
    )
    probe.add_argument(
        "--model",
        default="linear",
        choices=["linear", "boosting"],
        help="linear: L-BFGS logistic regression → probe.json (default); "
        "boosting: scikit-learn's HistGradientBoosting → probe_boosting.json",
    )
    probe.add_argument(
        "--folds",
        type=int,
        help="also report mean ± std of top-1 and AUROC over this many stratified folds of the train split",
    )
    probe.add_argument(
        "--weight-decay",
        type=float,
        help="lbfgs: fit at this weight decay (one fit) instead of picking it on a validation split (seven "
        "fits); sgd: SGD's weight decay (default 0)",
    )
    probe.add_argument(
        "--protocol",
        default="lbfgs",
        choices=["lbfgs", "sgd"],
        help="the linear probe's: lbfgs fits it on frozen features of plain images → probe.json (default); "
        "sgd trains it by SGD with Nesterov momentum and a cosine lr on random crops and flips of the "
        "train images over the frozen backbone → probe_sgd.json (the options below)",
    )
    _add_sgd_options(probe, str(SGD_PROBE_EPOCHS), str(SGD_PROBE_LR))
    probe.set_defaults(handler=_probe)
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune the backbone and a linear layer on a share of the labels → finetune.json",
    )
    finetune.add_argument("run_dir", help="run directory written by pretraining, e.g. runs/quickstart")
    finetune.add_argument("overrides", nargs="*", help="section.key=value applied to the run's config")
    finetune.add_argument(
        "--label-fraction",
        type=float,
        required=True,
        help="the seeded, class-stratified share of the labelled train images, e.g. 0.01, 0.1 or 1.0",
    )
    _add_sgd_options(
        finetune,
        f"{FINETUNE_EPOCHS_FEW_LABELS} for 1%% of the labels, {FINETUNE_EPOCHS} for more",
        str(FINETUNE_LR),
    )
    finetune.add_argument("--weight-decay", type=float, help="SGD's weight decay (default 0)")
    finetune.set_defaults(handler=_finetune)
    knn = _evaluation_parser(
        commands, "knn", "weighted kNN on a run's frozen features → knn.json", ["backbone", "projection"]
    )
    knn.add_argument("--k", type=int, default=KNN_K, help=f"neighbours that vote (default {KNN_K})")
    knn.add_argument(
        "--temperature",
        type=float,
        default=KNN_TEMPERATURE,
        help=f"vote weight exp(s/T) (default {KNN_TEMPERATURE})",
    )
    knn.set_defaults(handler=_knn)
    evaluate = _evaluation_parser(
        commands,
        "evaluate",
        "linear probe and kNN in one process, the data embedded once → probe.json, knn.json",
        ["backbone", "projection"],
    )
    evaluate.add_argument(
        "--evaluations",
        nargs="+",
        choices=["probe", "knn", "boosting"],
        default=["probe", "knn"],
        help="which to run, in this order (default: probe knn; boosting: `probe --model boosting`); "
        "each with its command's defaults",
    )
    evaluate.add_argument("--weight-decay", type=float, help="the probe's weight decay, as probe's option")
    evaluate.set_defaults(handler=_evaluate)
    plot = _evaluation_parser(
        commands, "plot", "t-SNE or UMAP map of a run's test features → PNG", ["backbone", "projection"]
    )
    plot.add_argument("--method", default="tsne", choices=["tsne", "umap"], help="the map (default tsne)")
    plot.add_argument("--max-points", type=int, default=10_000, help="test items mapped (default 10,000)")
    plot.add_argument("--perplexity", type=float, default=30.0, help="t-SNE's perplexity (30)")
    plot.add_argument("--neighbours", type=int, default=15, help="UMAP's n_neighbors (15)")
    plot.set_defaults(handler=_plot)
    export = commands.add_parser(
        "export", help="write a run's backbone for timm, the Hub, ONNX or TorchScript"
    )
    export.add_argument("run_dir", help="run directory written by pretraining, e.g. runs/quickstart")
    export.add_argument(
        "--format",
        required=True,
        choices=["timm", "hf", "onnx", "torchscript"],
        help="timm: one .safetensors file; hf: a Hugging Face folder; onnx; torchscript (see docs/export.md)",
    )
    export.add_argument("--out", required=True, type=Path, help="file to write (a folder for hf)")
    export.add_argument("--overwrite", action="store_true", help="replace what is at --out already")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The exit code is `ssl_toolkit.process.status.ExitCode`'s; the outcome goes where `$SSL_TOOLKIT_OUTCOME`
    says (pretraining writes its own, in its run directory too)."""
    args = build_parser().parse_args(argv)
    if args.handler is _pretrain:
        return _pretrain(args)
    with raising_on_stop_signals(f"ssl-toolkit {args.command}"):
        return run_entry_point(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
