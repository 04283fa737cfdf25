"""The shipped recipes and Accelerate configs: they load, build, cite their sources and match the README."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from pretraining_runs import REPO, pretrain_tiny, records
from torch import nn

from ssl_toolkit.config import load_config
from ssl_toolkit.kinds import SequenceKind, create_data_kind
from ssl_toolkit.kinds.images.datasets import DATASETS
from ssl_toolkit.losses import NTXentLoss, create_loss
from ssl_toolkit.optim import scale_lr
from ssl_toolkit.run_dir import RunDirectory

RECIPE_DIR = REPO / "recipes"
ACCELERATE_DIR = RECIPE_DIR / "accelerate"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted(ACCELERATE_DIR.glob("*.yaml"))
CPU_RECIPES = [RECIPE_DIR / "quickstart.yaml", RECIPE_DIR / "fashion_mnist_simclr_cpu.yaml"]
SEQUENCE_RECIPES = [
    RECIPE_DIR / "synthetic_events_coles.yaml",
    RECIPE_DIR / "ucr_basic_motions_coles.yaml",
    RECIPE_DIR / "events_coles.yaml",
]
GPU_RECIPES = [path for path in RECIPES if path not in CPU_RECIPES + SEQUENCE_RECIPES]
CITED_RECIPES = [path for path in RECIPES if path.stem != "quickstart"]
FASHION_MNIST_RECIPES = [
    RECIPE_DIR / "fashion_mnist_simclr.yaml",
    RECIPE_DIR / "fashion_mnist_supcon.yaml",
    RECIPE_DIR / "fashion_mnist_simclr_cpu.yaml",
]
# Sections whose numeric values are hyperparameters that must cite a source (data, log and seed need not).
CITED_SECTIONS = ("augment", "model", "loss", "optim", "train")

# recipe: (dataset, backbone, cifar_stem, loss, supervised, temperature, processes it is meant for,
# global batch, peak lr after scaling)
EXPECTED = {
    "fashion_mnist_simclr": ("fashion_mnist", "resnet18", True, "ntxent", False, 0.5, 1, 512, 2.0),
    "fashion_mnist_supcon": ("fashion_mnist", "resnet18", True, "supcon", True, 0.1, 1, 512, 0.25),
    "fashion_mnist_simclr_cpu": ("fashion_mnist", "small_convnet", False, "ntxent", False, 0.5, 1, 256, 1e-3),
    "cifar10_simclr_resnet18": ("cifar10", "resnet18", True, "ntxent", False, 0.5, 1, 512, 2.0),
    "cifar100_supcon_resnet50": ("cifar100", "resnet50", True, "supcon", True, 0.1, 8, 1024, 0.5),
    "stl10_simclr": ("stl10", "resnet18", False, "ntxent", False, 0.5, 1, 512, 0.075 * math.sqrt(512)),
    "imagenet_simclr_resnet50": ("imagefolder", "resnet50", False, "ntxent", False, 0.1, 8, 4096, 4.8),
}
# config file: (distributed_type, num_processes, num_machines)
EXPECTED_ACCELERATE = {
    "single_gpu": ("NO", 1, 1),
    "multi_gpu_8": ("MULTI_GPU", 8, 1),
    "multi_node": ("MULTI_GPU", 16, 2),
    "cpu_2proc": ("MULTI_GPU", 2, 1),
}


def _ids(path: Path) -> str:
    return path.name


def _readme_recipes_section() -> str:
    readme = (REPO / "README.md").read_text()
    start, end = readme.find("\n## Recipes\n"), readme.find("\n## Development\n")
    assert 0 <= start < end, "README.md needs a '## Recipes' section before '## Development'"
    return readme[start:end]


def test_every_promised_recipe_and_accelerate_config_ships():
    assert {path.stem for path in RECIPES} >= {"quickstart", *EXPECTED}
    assert {path.stem for path in ACCELERATE_CONFIGS} >= set(EXPECTED_ACCELERATE)


@pytest.mark.parametrize("recipe", RECIPES, ids=_ids)
def test_recipe_dataset_and_loss_exist_and_build(recipe):
    config = load_config(recipe)
    if recipe in SEQUENCE_RECIPES:
        assert config.data.name in SequenceKind.dataset_names(), f"{recipe.name}: {config.data.name!r}"
    else:
        assert config.data.name in DATASETS, f"{recipe.name}: unknown dataset {config.data.name!r}"
        assert config.data.pretrain_split in DATASETS[config.data.name].splits
    options = dict(config.loss.options)
    if config.loss.name == "arcface":
        options.update(num_classes=10, embedding_dim=config.model.proj_dim)
    loss = create_loss(config.loss.name, **options)
    assert isinstance(loss, nn.Module)
    if config.loss.supervised:
        assert config.loss.name != "ntxent", "supervised pretraining needs a label-based loss"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_matches_its_published_setup(name):
    dataset, backbone, stem, loss, supervised, temperature, processes, global_batch, peak_lr = EXPECTED[name]
    config = load_config(RECIPE_DIR / f"{name}.yaml")
    assert (config.data.name, config.model.backbone, config.model.cifar_stem) == (dataset, backbone, stem)
    assert (config.loss.name, config.loss.supervised) == (loss, supervised)
    assert config.loss.options["temperature"] == pytest.approx(temperature)
    assert config.train.batch_size * processes == global_batch, "train.batch_size is per process"
    lr = scale_lr(config.optim.lr, global_batch, config.optim.lr_scaling)
    assert lr == pytest.approx(peak_lr)


def test_imagenet_recipe_is_simclr_at_batch_4096_on_8_gpus():
    config = load_config(RECIPE_DIR / "imagenet_simclr_resnet50.yaml")
    gpus = load_config_from_file(str(ACCELERATE_DIR / "multi_gpu_8.yaml")).num_processes
    assert gpus == 8 and config.train.batch_size * gpus == 4096
    assert config.optim.name == "lars"
    assert (config.optim.lr, config.optim.lr_scaling) == (pytest.approx(0.3), "linear")
    assert scale_lr(config.optim.lr, 4096, config.optim.lr_scaling) == pytest.approx(4.8)
    assert config.loss.name == "ntxent" and config.loss.options["temperature"] == pytest.approx(0.1)
    assert config.optim.weight_decay == pytest.approx(1e-6) and config.optim.warmup_epochs == 10
    assert (config.model.proj_hidden_dim, config.model.proj_dim) == (2048, 128)
    assert config.model.sync_bn and config.data.image_size == 224
    # 2 nodes x 8 GPUs keep SimCLR's 4096 with half the per-process batch, as the README says.
    nodes = load_config_from_file(str(ACCELERATE_DIR / "multi_node.yaml")).num_processes
    assert 4096 % nodes == 0 and f"train.batch_size={4096 // nodes}" in _readme_recipes_section()


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=_ids)
def test_gpu_recipe_uses_gpu_views_bf16_wandb_and_checkpoints(recipe):
    config = load_config(recipe)
    raw = yaml.safe_load(recipe.read_text())
    assert config.augment.device == "auto"
    assert config.train.mixed_precision == "bf16"
    assert config.log.trackers == ["wandb"]
    assert "checkpoint_every" in raw["train"], "set train.checkpoint_every for the run's length"
    assert config.data.num_workers > 0
    assert config.run.name == recipe.stem, "run.name should name the run directory after the recipe"


def test_cpu_recipe_makes_views_in_workers_trains_in_bf16_channels_last_and_logs_to_wandb():
    recipe = RECIPE_DIR / "fashion_mnist_simclr_cpu.yaml"
    config = load_config(recipe)
    assert (config.augment.device, config.train.mixed_precision) == ("cpu", "bf16")
    assert config.train.channels_last and config.data.num_workers > 0
    assert config.log.trackers == ["wandb"] and config.run.name == recipe.stem


@pytest.mark.parametrize("recipe", CITED_RECIPES, ids=_ids)
def test_every_hyperparameter_cites_its_source(recipe):
    """Each numeric value in the hyperparameter sections has a comment on its line or just above it."""
    section, previous, missing = None, "", []
    for number, line in enumerate(recipe.read_text().splitlines(), start=1):
        stripped = line.strip()
        if line and not line[0].isspace() and not stripped.startswith("#"):
            section = stripped.split(":")[0]
        elif section in CITED_SECTIONS and not stripped.startswith("#") and ":" in stripped:
            key, value = (part.strip() for part in stripped.split("#")[0].split(":", 1))
            if re.fullmatch(r"-?[\d.]+(e-?\d+)?", value) and "#" not in line and not previous.startswith("#"):
                missing.append(f"line {number}: {section}.{key}")
        previous = stripped or previous
    assert not missing, f"{recipe.name}: no source given for " + ", ".join(missing)


@pytest.mark.parametrize("recipe", FASHION_MNIST_RECIPES, ids=_ids)
def test_fashion_mnist_recipe_runs_a_real_step_on_cpu(recipe, tmp_path):
    """One optimiser step of the recipe on the real data, shrunk to a CPU-sized batch.

    bf16 convolutions take ~15 s per forward on a CPU without bf16 instructions, so this step runs in
    float32; `test_recipe_loss_trains_under_its_mixed_precision` covers the recipes' autocast. Accelerate's
    singletons are reset before and after.
    """
    overrides = [
        "train.max_steps=1",
        "train.batch_size=16",
        "data.num_workers=0",
        "log.trackers=[]",
        "log.knn_every=0",  # the step, not the evaluation of 10,000 train images after it
        'train.mixed_precision="no"',  # quoted: YAML reads a bare no as false
        f"run.output_dir={tmp_path}",
    ]
    run_dir = pretrain_tiny(tmp_path, config=load_config(recipe, overrides))
    logged = records(run_dir)
    assert logged and logged[-1]["step"] == 1 and math.isfinite(logged[-1]["loss"])
    assert RunDirectory(run_dir).encoder.is_file()
    saved = yaml.safe_load(RunDirectory(run_dir).config.read_text())
    written = yaml.safe_load(recipe.read_text())["loss"]
    assert saved["data"]["name"] == "fashion_mnist" and saved["loss"] == {"supervised": False, **written}


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=_ids)
def test_recipe_loss_trains_under_its_mixed_precision(recipe):
    """The recipe's loss on half-precision embeddings inside autocast, as pretraining calls it on a GPU.

    CPU autocast lowers matmuls to bf16 as CUDA autocast does; the loss must return a finite float32
    value and a gradient.
    """
    config = load_config(recipe)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.train.mixed_precision]
    loss = create_loss(config.loss.name, **config.loss.options)
    torch.manual_seed(0)
    batch, head = 8, nn.Linear(32, config.model.proj_dim)
    features = torch.randn(2 * batch, 32)
    labels = torch.arange(batch).repeat(2) % (3 if config.loss.supervised else batch)
    with torch.autocast("cpu", dtype=dtype):
        embeddings = head(features)
        assert embeddings.dtype == dtype
        value = loss(*embeddings.chunk(2)) if isinstance(loss, NTXentLoss) else loss(embeddings, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("config_file", ACCELERATE_CONFIGS, ids=_ids)
def test_accelerate_config_loads_with_accelerates_own_loader(config_file):
    config = load_config_from_file(str(config_file))
    assert config.num_processes % config.num_machines == 0
    expected = EXPECTED_ACCELERATE.get(config_file.stem)
    if expected is not None:
        assert (config.distributed_type.value, config.num_processes, config.num_machines) == expected
    if config.num_machines > 1:
        assert config.main_process_ip and config.main_process_port
        assert config.rdzv_backend == "static" and config.same_network


def test_readme_launch_commands_use_shipped_files_and_valid_overrides():
    section = _readme_recipes_section()
    for name in [path.name for path in RECIPES] + [path.name for path in ACCELERATE_CONFIGS]:
        assert name in section, f"README's Recipes section does not mention {name}"
    assert "per process" in section
    commands = [
        shlex.split(block.replace("\\\n", " "))
        for block in re.findall(r"^accelerate launch (?:.*\\\n)*.*$", section, flags=re.MULTILINE)
    ]
    launched = set()
    for words in commands:
        if words[-1] == "&":  # started in the background, as in the SLURM job
            words = words[:-1]
        config_file = words[words.index("--config_file") + 1]
        assert (REPO / config_file).is_file(), config_file
        load_config_from_file(str(REPO / config_file))
        module = words.index("-m")
        assert words[module + 1] == "ssl_toolkit.pretrain"
        recipe, *overrides = words[module + 2 :]
        load_config(REPO / recipe, overrides)
        launched.add(Path(config_file).name)
    assert launched == {path.name for path in ACCELERATE_CONFIGS}, "a launch command for every config"


def test_the_quickstart_checkpoints_before_its_last_step():
    config = load_config(RECIPE_DIR / "quickstart.yaml")

    steps_per_epoch = len(create_data_kind(config).pretraining_dataset()) // config.train.batch_size
    total_steps = config.train.epochs * steps_per_epoch
    assert config.train.checkpoint_every < total_steps, "a crash would lose the whole run"
    assert total_steps // config.train.checkpoint_every >= 4


def _ucr_archive(folder: Path) -> Path:
    """A BasicMotions-shaped archive (6 dimensions, 4 classes) of random series, for a run's few steps."""
    generator = torch.Generator().manual_seed(0)
    labels = ["Standing", "Running", "Walking", "Badminton"]
    header = f"@problemName BasicMotions\n@univariate false\n@classLabel true {' '.join(labels)}\n@data\n"
    for split, count in (("TRAIN", 40), ("TEST", 8)):
        rows = []
        for index in range(count):
            series = torch.randn(6, 100, generator=generator).tolist()
            rows.append(
                ":".join(",".join(f"{v:.3f}" for v in dim) for dim in series) + f":{labels[index % 4]}"
            )
        (folder / f"BasicMotions_{split}.ts").write_text(header + "\n".join(rows) + "\n")
    return folder


def _events_table(folder: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    lines, labels = ["id,time,mcc,amount"], ["id,target"]
    for client in range(80):
        for step in range(int(torch.randint(30, 90, (), generator=generator))):
            code, amount = (
                int(torch.randint(0, 5, (), generator=generator)),
                float(torch.rand((), generator=generator)),
            )
            lines.append(f"c{client},{step},m{code},{amount:.3f}")
        labels.append(f"c{client},{client % 2}")
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    (folder / "labels.csv").write_text("\n".join(labels) + "\n")
    return folder


@pytest.mark.parametrize("recipe", SEQUENCE_RECIPES, ids=_ids)
def test_sequence_recipe_runs_real_steps_on_cpu(recipe, tmp_path):
    """A few steps of each sequence recipe as a user runs it: the synthetic clients as they are, the UCR
    archive and the events table from files of their shape under data.root."""
    overrides = ["train.max_steps=2", "log.trackers=[]", "log.knn_every=0", "data.num_workers=0",
                 f"run.output_dir={tmp_path}"]  # fmt: skip
    if recipe.stem == "ucr_basic_motions_coles":
        overrides.append(f"data.root={_ucr_archive(tmp_path)}")
    if recipe.stem == "events_coles":
        overrides += [
            f"data.root={_events_table(tmp_path)}",
            "data.categorical=[mcc]",
            "data.numeric=[amount]",
        ]
    config = load_config(recipe, overrides)
    assert config.run.name == recipe.stem
    run_dir = pretrain_tiny(tmp_path, config=config)
    logged = records(run_dir)
    assert logged[-1]["step"] == 2 and math.isfinite(logged[-1]["loss"])
    assert RunDirectory(run_dir).encoder.is_file()
