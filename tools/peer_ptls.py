"""CoLES on event sequences, side by side with pytorch-lifestream (ptls): seconds per epoch, peak memory and
downstream accuracy / AUROC at batch sizes 64-1024, and where a pairwise softmax fails for want of memory.

Both sides train on the same clients (`data.name=synthetic_events`: 4 classes, lengths 20-400, the train
split of 1,600 clients), with a GRU of the same size over CoLES slices (split_count 5, 25-100 events),
Adam at the same learning rate, for the same epochs, and are scored by the same downstream models
(ssl_toolkit's linear probe at weight decay 1e-4 and gradient boosting) on the frozen full-sequence
embeddings of train and test. Each configuration runs in a process of its own (this script as a worker,
started by `ssl_toolkit.process.launch.Subprocess`), whose peak resident memory the kernel reports when it
ends (`wait4`'s ru_maxrss, the launcher's `peak_memory_mb`), under an address-space limit
(`--memory-limit-gb`, the launcher's `memory_limit_mb`) that stands in for a GPU's memory. Both sides' workers
write their figures to a result file and end through the toolkit's entry point, so the outcome file says how
each ended: an allocation failure (ours or ptls's, recognised by `as_failure`) or a SIGKILL nobody here sent
is reported as out-of-memory (status `out_of_memory`). Only a worker that died before it could write an
outcome has its captured output read, for a peer's allocation failure (`mentions_out_of_memory`).

Configurations:
  ours-coles            ssl_toolkit, loss.name=coles (CoLES's softmax loss), temperature 0.05
  ours-contrastive      ssl_toolkit, loss.name=contrastive, margin 0.5, 5 hardest negatives
  ptls-softmax          ptls 0.7.0 CoLESModule + SoftmaxLoss(temperature=0.05)
  ptls-contrastive      ptls 0.7.0 CoLESModule + ContrastiveLoss(0.5, HardNegativePairSelector(5))
  ptls-pairwise-softmax ptls CoLESModule + the pairwise softmax of the CoLES study's development branch,
                        restated here: every (anchor, positive) pair gathered with all its negatives
                        into one tensor of shape (pairs, 1 + negatives, 2, D) before the dot products

ptls pins clash with this project's environment (spacy, transformers), so it lives in a venv of its own
that sees this project's packages (torch, lightning, scikit-learn) and adds ptls without its pins:

  python3 -m venv tools/.venv-ptls
  echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
      > tools/.venv-ptls/lib/python3.11/site-packages/project_venv.pth
  tools/.venv-ptls/bin/pip install --no-deps pytorch-lifestream==0.7.0 pandas pymonad pyarrow duckdb \\
      transformers regex tokenizers

Run (about 8 min on 2 cores, 2 epochs):
  .venv/bin/python tools/peer_ptls.py --epochs 2 --batch-sizes 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from ssl_toolkit.process.launch import Command, Subprocess
from ssl_toolkit.process.outcome import read_outcome, run_entry_point
from ssl_toolkit.process.status import Status, mentions_out_of_memory

REPO = Path(__file__).resolve().parent.parent
PTLS_PYTHON = REPO / "tools" / ".venv-ptls" / "bin" / "python"
CONFIGURATIONS = (
    "ours-coles",
    "ours-contrastive",
    "ptls-softmax",
    "ptls-contrastive",
    "ptls-pairwise-softmax",
)
SPLIT_COUNT, CNT_MIN, CNT_MAX = 5, 25, 100
TEMPERATURE, MARGIN, NEG_COUNT = 0.05, 0.5, 5
LEARNING_RATE = 2e-3
PROBE_WEIGHT_DECAY = 1e-4
MEMORY_ADVICE = "a smaller batch, or a higher --memory-limit-gb"


def _recipe_overrides(hidden: int, batch: int, epochs: int, output_dir: Path) -> list[str]:
    """ssl_toolkit's side, also the source of the clients and splits both sides use."""
    return [
        "log.trackers=[]",
        "log.knn_every=0",
        "log.every=1000",
        f"model.backbone_args={{hidden_size: {hidden}}}",
        f"augment.split_count={SPLIT_COUNT}",
        f"augment.cnt_min={CNT_MIN}",
        f"augment.cnt_max={CNT_MAX}",
        f"optim.lr={LEARNING_RATE}",
        "optim.lr_scaling=none",
        "optim.warmup_epochs=0",
        f"train.batch_size={batch}",
        f"train.epochs={epochs}",
        "train.checkpoint_every=100000",
        f"run.output_dir={output_dir}",
        "run.name=peer",
    ]


def _config(hidden: int, batch: int, epochs: int, output_dir: Path, loss: list[str]):
    from ssl_toolkit.config import load_config

    return load_config(
        "synthetic_events_coles", [*_recipe_overrides(hidden, batch, epochs, output_dir), *loss]
    )


def _downstream(train, test, num_classes: int, seed: int) -> dict:
    from ssl_toolkit.eval.boosting import evaluate_boosting
    from ssl_toolkit.eval.linear_probe import evaluate_linear_probe

    linear = evaluate_linear_probe(train, test, num_classes, seed=seed, weight_decay=PROBE_WEIGHT_DECAY)
    boosting = evaluate_boosting(train, test, num_classes, seed=seed)
    return {
        "probe_top1": linear["top1"],
        "probe_auroc": linear["auroc"],
        "boosting_top1": boosting["top1"],
        "boosting_auroc": boosting["auroc"],
    }


# -- ssl_toolkit's side ------------------------------------------------------------------------------------
def run_ours(configuration: str, hidden: int, batch: int, epochs: int, seed: int) -> dict:
    from ssl_toolkit.eval.run import EvaluationRun
    from ssl_toolkit.pretrain import pretrain
    from ssl_toolkit.run_dir import RunDirectory

    loss = (
        ["loss.name=coles", f"loss.temperature={TEMPERATURE}"]
        if configuration == "ours-coles"
        else ["loss.name=contrastive", "loss.temperature=null", f"loss.neg_count={NEG_COUNT}"]
    )
    with tempfile.TemporaryDirectory() as output:
        config = _config(hidden, batch, epochs, Path(output), [*loss, f"seed={seed}"])
        run_dir = pretrain(config)
        summary = RunDirectory(run_dir).read_summary()
        run = EvaluationRun(run_dir)
        train, test = run.features("backbone", "train"), run.features("backbone", "test")
        return {
            "seconds_per_epoch": summary["seconds"] / epochs,
            "steps": summary["steps"],
            **_downstream(train, test, run.num_classes, seed),
        }


# -- pytorch-lifestream's side -----------------------------------------------------------------------------
def _clients_as_feature_dicts(dataset) -> tuple[list[dict], list[int]]:
    """ssl_toolkit's evaluation items (events, target, readable) → ptls feature dicts and targets."""
    import torch

    records, targets = [], []
    for index in range(len(dataset)):
        events, target, _readable = dataset[index]
        record = {name: values for name, values in events.items()}
        record["event_time"] = torch.cumsum(events["dt"].float(), 0)  # ptls slices by the time column
        records.append(record)
        targets.append(int(target))
    return records, targets


class PairwiseSoftmaxLoss:
    """The CoLES study's pairwise softmax: each (anchor, positive) pair with every negative of the anchor,
    gathered as embedding pairs (pairs, 1 + negatives, 2, D) and reduced by dot products afterwards."""

    def __new__(cls, temperature: float):
        import torch

        class Loss(torch.nn.Module):
            def forward(self, embeddings, classes):
                same = classes[:, None] == classes[None, :]
                same.fill_diagonal_(False)
                anchors, positives = same.nonzero(as_tuple=True)
                negatives_of = (classes[anchors][:, None] != classes[None, :]).nonzero(as_tuple=True)[1]
                negatives_of = negatives_of.view(len(anchors), -1)
                partners = torch.cat([positives[:, None], negatives_of], dim=1)  # (pairs, 1 + negatives)
                left = embeddings[anchors][:, None, :].expand(-1, partners.shape[1], -1)
                pairs = torch.stack([left, embeddings[partners]], dim=2)  # (pairs, 1 + negatives, 2, D)
                logits = (pairs[:, :, 0] * pairs[:, :, 1]).sum(-1) / temperature
                return -torch.log_softmax(logits, dim=1)[:, 0].mean()

        return Loss()


def run_ptls(configuration: str, hidden: int, batch: int, epochs: int, seed: int) -> dict:
    from functools import partial

    import pytorch_lightning as pl
    import torch
    from ptls.data_load.utils import collate_feature_dict
    from ptls.frames.coles import ColesDataset, CoLESModule
    from ptls.frames.coles.losses import ContrastiveLoss, SoftmaxLoss
    from ptls.frames.coles.sampling_strategies import HardNegativePairSelector
    from ptls.frames.coles.split_strategy import SampleSlices
    from ptls.nn import RnnSeqEncoder, TrxEncoder

    from ssl_toolkit.kinds import create_data_kind

    pl.seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory() as output:
        config = _config(hidden, batch, epochs, Path(output), [f"seed={seed}"])
    kind = create_data_kind(config)
    train_records, train_targets = _clients_as_feature_dicts(kind.evaluation_dataset("train"))
    test_records, test_targets = _clients_as_feature_dicts(kind.evaluation_dataset("test"))
    codes = int(max(int(r["event_type"].max()) for r in train_records + test_records)) + 1

    if configuration == "ptls-softmax":
        loss = SoftmaxLoss(temperature=TEMPERATURE)
    elif configuration == "ptls-contrastive":
        loss = ContrastiveLoss(margin=MARGIN, sampling_strategy=HardNegativePairSelector(neg_count=NEG_COUNT))
    else:
        loss = PairwiseSoftmaxLoss(TEMPERATURE)
    encoder = RnnSeqEncoder(
        trx_encoder=TrxEncoder(
            embeddings={"event_type": {"in": codes, "out": 16}},  # ssl_toolkit's embedding_dim default
            numeric_values={"amount": "identity", "dt": "identity"},
        ),
        hidden_size=hidden,
        type="gru",
    )
    module = CoLESModule(
        seq_encoder=encoder,
        loss=loss,
        optimizer_partial=partial(torch.optim.Adam, lr=LEARNING_RATE),
        lr_scheduler_partial=partial(torch.optim.lr_scheduler.StepLR, step_size=1000, gamma=1.0),
    )
    dataset = ColesDataset(train_records, splitter=SampleSlices(SPLIT_COUNT, CNT_MIN, CNT_MAX))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=ColesDataset.collate_fn
    )

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, loader)

    def embed(records: list[dict]) -> torch.Tensor:
        encoder.eval()
        with torch.no_grad():
            return torch.cat(
                [encoder(collate_feature_dict(records[i : i + 256])) for i in range(0, len(records), 256)]
            )

    train = (embed(train_records), torch.tensor(train_targets))
    test = (embed(test_records), torch.tensor(test_targets))
    return {
        "seconds_per_epoch": sum(timer.seconds) / len(timer.seconds),
        "steps": trainer.global_step,
        **_downstream(train, test, kind.evaluation_dataset("train").num_classes, seed),
    }


# -- the comparison --------------------------------------------------------------------------------------
def measure(configuration: str, args: argparse.Namespace, batch: int, folder: Path) -> dict:
    """One configuration in a process of its own: its figures, peak RSS and status."""
    python = sys.executable if configuration.startswith("ours") else str(PTLS_PYTHON)
    stem = folder / f"{configuration}_{batch}"
    result_path, outcome_path, log = (stem.with_suffix(suffix) for suffix in (".json", ".outcome", ".log"))
    command = Command.of_script(
        __file__,
        ["--child", configuration, "--batch", str(batch), "--seed", str(args.seed), "--hidden",
         str(args.hidden), "--epochs", str(args.epochs), "--result", str(result_path)],
    )  # fmt: skip
    finished = Subprocess(python=python).run(
        command,
        outcome=outcome_path,
        log=log,
        environment={"PYTHONPATH": str(REPO)},
        memory_limit_mb=int(args.memory_limit_gb * 1024),
    )
    result = {"configuration": configuration, "batch_size": batch, "peak_rss_mb": finished.peak_memory_mb,
              "wall_seconds": finished.seconds}  # fmt: skip
    outcome = finished.outcome
    if outcome.status is Status.OK and result_path.is_file():
        return {**result, **json.loads(result_path.read_text()), "status": Status.OK.value}
    output = log.read_text(errors="replace") if log.is_file() else ""
    last_line = (output.strip().splitlines() or [f"exit {finished.exit_code}"])[-1][:300]
    if read_outcome(outcome_path) is None and mentions_out_of_memory(output):
        # The worker died before it could say how it ended (an abort in native code): only then is the
        # peer's own output read, for an allocation failure.
        return {**result, "status": Status.OUT_OF_MEMORY.value, "error": last_line}
    status = Status.ERROR if outcome.status is Status.OK else outcome.status  # ok, but no result written
    return {**result, "status": status.value, "error": outcome.message or last_line}


def _cell(result: dict, key: str, digits: int) -> str:
    return f"{result[key]:.{digits}f}" if key in result else "-"


def _table(results: list[dict]) -> str:
    header = ("| configuration | batch | s/epoch | peak RSS MB | probe top-1 | probe AUROC | boosting top-1 "
              "| boosting AUROC | status |")  # fmt: skip
    lines = [header, "|" + "---|" * 9]
    for r in results:
        lines.append(
            f"| {r['configuration']} | {r['batch_size']} | {_cell(r, 'seconds_per_epoch', 2)} | "
            f"{r['peak_rss_mb']:.0f} | {_cell(r, 'probe_top1', 4)} | {_cell(r, 'probe_auroc', 4)} | "
            f"{_cell(r, 'boosting_top1', 4)} | {_cell(r, 'boosting_auroc', 4)} | "
            f"{Status(r['status']).phrase} |"
        )
    return "\n".join(lines)


def _ratios(results: list[dict]) -> str:
    by = {(r["configuration"], r["batch_size"]): r for r in results if r["status"] == "ok"}

    def ratio(ours: str, theirs: str, batch: int) -> str:
        a, b = by.get((ours, batch)), by.get((theirs, batch))
        return f"{a['seconds_per_epoch'] / b['seconds_per_epoch']:.2f}×" if a and b else "-"

    lines = ["| batch | coles / ptls softmax (s/epoch) | contrastive / ptls contrastive (s/epoch) |",
             "|---|---|---|"]  # fmt: skip
    for batch in sorted({r["batch_size"] for r in results}):
        lines.append(f"| {batch} | {ratio('ours-coles', 'ptls-softmax', batch)} | "
                     f"{ratio('ours-contrastive', 'ptls-contrastive', batch)} |")  # fmt: skip
    return "\n".join(lines)


def pairwise_bytes(batch: int, dim: int) -> int:
    """float32 bytes of the pairwise softmax's gathered tensor (pairs, 1 + negatives, 2, D)."""
    views = batch * SPLIT_COUNT
    pairs = views * (SPLIT_COUNT - 1)
    return pairs * (1 + views - SPLIT_COUNT) * 2 * dim * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    parser.add_argument("--hidden", type=int, default=64, help="GRU hidden size, both sides")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-gb", type=float, default=12.0)
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "peer_ptls.json")
    parser.add_argument("--child", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_ours if args.child.startswith("ours") else run_ptls

        def body() -> None:
            figures = run(args.child, args.hidden, args.batch, args.epochs, args.seed)
            args.result.write_text(json.dumps(figures))

        sys.exit(run_entry_point(body, memory_advice=MEMORY_ADVICE))
    if not PTLS_PYTHON.exists() and any(c.startswith("ptls") for c in args.configurations):
        sys.exit(f"error: {PTLS_PYTHON} is missing; create the ptls venv as this tool's docstring shows")
    results = []
    with tempfile.TemporaryDirectory(prefix="peer_ptls_") as folder:  # the workers' results and logs
        for batch in args.batch_sizes:
            for configuration in args.configurations:
                result = measure(configuration, args, batch, Path(folder))
                results.append(result)
                print(json.dumps(result), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(f"\nGRU {args.hidden}, split_count {SPLIT_COUNT}, {args.epochs} epochs, "
          f"address space limit {args.memory_limit_gb:g} GiB per configuration\n")  # fmt: skip
    print(_table(results))
    print()
    print(_ratios(results))
    print("\npairwise softmax's gathered tensor, float32 (GB): "
          + ", ".join(f"batch {b}: {pairwise_bytes(b, args.hidden) / 1e9:.1f} (D={args.hidden}), "
                      f"{pairwise_bytes(b, 800) / 1e9:.1f} (D=800)" for b in args.batch_sizes))  # fmt: skip


if __name__ == "__main__":
    main()
