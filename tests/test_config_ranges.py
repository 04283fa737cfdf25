"""Every numeric config key and loss option has a valid range, checked by `load_config` in one line."""

from __future__ import annotations

import re
import types
import typing

import pytest
import torch

from ssl_toolkit.config import SECTIONS, Config, ConfigError, load_config, packaged_recipes
from ssl_toolkit.config.schema import LOSS_OPTION_RANGES, RANGES, loss_option_range
from ssl_toolkit.kinds import create_data_kind
from ssl_toolkit.losses import LOSSES

# (key, bad value, loss the override runs with, fragment the message must contain)
BAD_VALUES = [
    ("seed", "-1", "ntxent", "[0, 4294967296)"),
    ("seed", str(2**32), "ntxent", "[0, 4294967296)"),
    ("data.image_size", "0", "ntxent", "at least 1"),
    ("data.num_workers", "-1", "ntxent", "0 or more"),
    ("data.channels", "2", "ntxent", "one of 1, 3"),
    ("data.fraction", "0", "ntxent", "(0, 1]"),
    ("data.fraction", "1.5", "ntxent", "(0, 1]"),
    ("augment.n_views", "1", "supcon", "at least 2"),
    ("augment.strength", "-0.5", "ntxent", "0 or more"),
    ("augment.strength", ".nan", "ntxent", "not finite"),
    ("augment.min_scale", "0", "ntxent", "(0, 1]"),
    ("augment.min_scale", "1.5", "ntxent", "(0, 1]"),
    ("augment.flip_p", "-0.1", "ntxent", "[0, 1]"),
    ("augment.blur_p", "1.1", "ntxent", "[0, 1]"),
    ("augment.solarize_p", "2", "ntxent", "[0, 1]"),
    ("augment.small_crops", "-1", "supcon", "0 or more"),
    ("augment.small_size", "0", "ntxent", "at least 1"),
    ("augment.split_count", "1", "supcon", "at least 2"),
    ("augment.cnt_min", "0", "ntxent", "at least 1"),
    ("augment.cnt_max", "0", "ntxent", "at least 1"),
    ("augment.event_dropout", "1.0", "ntxent", "[0, 1)"),
    ("augment.numeric_noise", "-0.1", "ntxent", "0 or more"),
    ("data.num_samples", "1", "ntxent", "at least 2"),
    ("model.proj_hidden_dim", "0", "ntxent", "at least 1"),
    ("model.proj_dim", "0", "ntxent", "at least 1"),
    ("optim.lr", "-1", "ntxent", "more than 0"),
    ("optim.lr", "0", "ntxent", "more than 0"),
    ("optim.lr", ".inf", "ntxent", "not finite"),
    ("optim.weight_decay", "-1", "ntxent", "0 or more"),
    ("optim.momentum", "1", "ntxent", "[0, 1)"),
    ("optim.momentum", "-0.1", "ntxent", "[0, 1)"),
    ("optim.warmup_epochs", "-1", "ntxent", "0 or more"),
    ("train.batch_size", "0", "arcface", "at least 1"),
    ("train.batch_size", "1", "ntxent", "needs the other samples of the batch as negatives"),
    ("train.batch_size", "1", "supcon", "at least 2"),
    ("train.epochs", "0", "ntxent", "at least 1"),
    ("train.max_steps", "0", "ntxent", "at least 1"),
    ("train.grad_cache_chunk", "-1", "ntxent", "0 or more"),
    ("train.checkpoint_every", "0", "ntxent", "at least 1"),
    ("train.max_bad_steps", "0", "ntxent", "at least 1"),
    ("train.clip_grad_norm", "-1", "ntxent", "more than 0"),
    ("train.clip_grad_norm", "0", "ntxent", "more than 0"),
    ("train.collective_timeout_s", "0", "ntxent", "more than 0"),
    ("log.every", "0", "ntxent", "at least 1"),
    ("log.knn_every", "-1", "ntxent", "0 or more"),
    ("log.online_probe_lr", "0", "ntxent", "more than 0"),
    ("loss.temperature", "0", "ntxent", "more than 0"),
    ("loss.temperature", ".inf", "supcon", "not finite"),
    ("loss.temperature", "-1", "coles", "more than 0"),
    ("loss.temperature", "0", "softmax", "more than 0"),
    ("loss.margin", "0", "triplet", "more than 0"),
    ("loss.margin", "-1", "contrastive", "more than 0"),
    ("loss.margin", "-0.1", "arcface", "[0, 1.5708)"),
    ("loss.margin", "1.6", "arcface", "[0, 1.5708)"),
    ("loss.scale", "0", "arcface", "more than 0"),
    ("loss.num_classes", "1", "arcface", "at least 2"),
    ("loss.embedding_dim", "0", "arcface", "at least 1"),
    ("loss.init_scale", "0", "sigmoid", "more than 0"),
    ("loss.init_bias", ".nan", "sigmoid", "not finite"),
    ("loss.label_smoothing", "1", "cross_entropy", "[0, 1)"),
    ("loss.label_smoothing", "-0.1", "cross_entropy", "[0, 1)"),
    ("loss.neg_count", "0", "contrastive", "at least 1, or null"),
]

# The loss settings a bad value is tried with: each of them loads as it is.
LOSS_SETTINGS = {
    "ntxent": ["loss.name=ntxent"],
    "supcon": ["loss.name=supcon"],
    "coles": ["loss.name=coles"],
    "softmax": ["loss.name=softmax"],
    "triplet": ["loss.name=triplet"],
    "contrastive": ["loss.name=contrastive"],
    "sigmoid": ["loss.name=sigmoid"],
    "arcface": ["loss.name=arcface", "loss.supervised=true"],
    "cross_entropy": ["loss.name=cross_entropy", "loss.supervised=true"],
}


def _numeric(annotation) -> tuple[bool, bool]:
    """Whether `annotation` is int or float (possibly `| None`), and whether it allows None."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    numeric = any(option in (int, float) for option in options)
    return numeric, type(None) in options


def _schema_numeric_keys() -> dict[str, bool]:
    """Every int/float key of the schema, by dotted name, and whether it may be null."""
    keys = {}
    for name, annotation in typing.get_type_hints(Config).items():
        if name in SECTIONS:
            for key, section_annotation in typing.get_type_hints(annotation).items():
                numeric, nullable = _numeric(section_annotation)
                if numeric:
                    keys[f"{name}.{key}"] = nullable
        else:
            numeric, nullable = _numeric(annotation)
            if numeric:
                keys[name] = nullable
    return keys


def _numeric_loss_options() -> set[tuple[str, str]]:
    """(loss name, option) for every int/float argument of every loss constructor."""
    found = set()
    for name, loss in LOSSES.items():
        for option, annotation in typing.get_type_hints(loss.__init__).items():
            if option != "return" and _numeric(annotation)[0]:
                found.add((name, option))
    return found


@pytest.mark.parametrize(("key", "bad", "loss", "fragment"), BAD_VALUES, ids=lambda v: str(v))
def test_a_value_out_of_range_stops_load_config_with_one_line(key, bad, loss, fragment, monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", None)  # nothing may be built before the check
    views = ["augment.n_views=2", "augment.small_crops=0"]
    overrides = [*LOSS_SETTINGS[loss], *views, "train.batch_size=8"]
    load_config(None, overrides)  # the setting itself is valid ...
    with pytest.raises(ConfigError) as error:
        load_config(None, [*overrides, f"{key}={bad}"])  # ... the bad value is not
    message = str(error.value)
    assert message.startswith(f"{key}="), message
    assert fragment in message, message
    assert "\n" not in message


def test_every_numeric_schema_key_has_a_range_matching_its_type():
    keys = _schema_numeric_keys()
    assert "seed" in keys and "optim.lr" in keys  # the introspection finds top-level and section keys
    missing = sorted(set(keys) - set(RANGES))
    assert not missing, f"no entry in schema.RANGES for {missing}"
    unknown = sorted(set(RANGES) - set(keys))
    assert not unknown, f"schema.RANGES names keys that are not numeric schema keys: {unknown}"
    wrong_null = sorted(key for key, nullable in keys.items() if RANGES[key].nullable != nullable)
    assert not wrong_null, f"RANGES allows null where the annotation does not, or the reverse: {wrong_null}"


def test_every_numeric_loss_option_has_a_range():
    options = _numeric_loss_options()
    assert ("ntxent", "temperature") in options and ("arcface", "num_classes") in options
    missing = sorted(option for option in options if loss_option_range(*option) is None)
    assert not missing, f"no entry in schema.LOSS_OPTION_RANGES for {missing}"
    unused = sorted(set(LOSS_OPTION_RANGES) - {option for _, option in options})
    assert not unused, f"LOSS_OPTION_RANGES names options no loss takes: {unused}"


def test_the_bad_value_table_covers_every_range():
    tried = {key for key, *_ in BAD_VALUES}
    assert not set(RANGES) - tried, f"no bad value tried for {sorted(set(RANGES) - tried)}"
    options = {f"loss.{option}" for _, option in _numeric_loss_options()}
    assert not options - tried, f"no bad value tried for {sorted(options - tried)}"


@pytest.mark.parametrize(
    "override",
    [
        "seed=4294967295",
        "augment.min_scale=1",
        "augment.flip_p=0",
        "augment.blur_p=1",
        "augment.strength=0",
        "optim.momentum=0",
        "optim.weight_decay=0",
        "optim.warmup_epochs=0",
        "train.clip_grad_norm=null",
        "train.max_steps=null",
        "data.channels=1",
        "data.fraction=1",
        "data.fraction=0.001",
        "train.grad_cache_chunk=0",
    ],
)
def test_the_edges_of_the_ranges_load(override):
    load_config(None, [override])


def test_arcface_trains_on_a_batch_of_one_and_takes_a_zero_margin():
    config = load_config(None, [*LOSS_SETTINGS["arcface"], "train.batch_size=1", "loss.margin=0"])
    assert config.train.batch_size == 1 and config.loss.options == {"margin": 0.0}


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/tmp/run", "../escape", "run name", "ä"])
def test_run_name_must_be_a_plain_name(name):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"run.name={name!r}"])  # quoted, so YAML reads it as a string
    assert str(error.value).startswith("run.name=") and "plain name" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_plain_run_name_loads():
    assert load_config(None, ["run.name=sim-clr_v1.2"]).run.name == "sim-clr_v1.2"


def test_resume_allow_takes_schema_keys_loss_options_and_num_processes():
    allowed = ["train.batch_size", "num_processes", "loss.temperature", "seed", "optim.lr"]
    assert load_config(None, [f"train.resume_allow=[{','.join(allowed)}]"]).train.resume_allow == allowed


@pytest.mark.parametrize("item", ["train.bath_size", "batch_size", "loss.options", "loss.temprature"])
def test_resume_allow_rejects_unknown_keys_and_lists_the_valid_ones(item):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"train.resume_allow=[train.epochs,{item}]"])
    message = str(error.value)
    assert message.startswith("train.resume_allow") and repr(item) in message
    assert "train.batch_size" in message and "num_processes" in message and "loss.temperature" in message
    assert "\n" not in message


@pytest.mark.parametrize("recipe", sorted(packaged_recipes()))
def test_every_packaged_recipe_loads(recipe):
    load_config(recipe)


@pytest.mark.parametrize(
    ("override", "key"), [("loss.temperature=0", "loss.temperature"), ("optim.lr=-1", "optim.lr")]
)
def test_the_command_exits_2_with_one_line_naming_the_key(override, key, capsys, monkeypatch, tmp_path):
    import ssl_toolkit.pretrain as pretrain_module

    def build_nothing(config):
        pytest.fail("the value reached pretrain(); load_config should have rejected it")

    monkeypatch.setattr(pretrain_module, "pretrain", build_nothing)
    code = pretrain_module.main(
        ["quickstart", override, "train.max_steps=1", "log.trackers=[]", f"run.output_dir={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.match(rf"error: {re.escape(key)}=", err), err
    assert "Traceback" not in err


def test_loss_constructors_keep_their_own_checks():
    # load_config checks the options first; a loss built directly still refuses a bad value.
    from ssl_toolkit.losses import NTXentLoss

    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)


def test_sync_bn_on_cpu_processes_is_one_line_before_building():
    from pretraining_runs import tiny_config

    from ssl_toolkit import build

    config = tiny_config("/tmp", "sync", "model.sync_bn=true")
    kind = create_data_kind(config)
    with pytest.raises(
        ConfigError, match=r"model.sync_bn=true needs CUDA processes .* set model.sync_bn=false"
    ):
        build.encoders(config, kind, 2, torch.device("cpu"))
    encoder, _ = build.encoders(config, kind, 1, torch.device("cpu"))  # one process: nothing to sync
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in encoder.modules())
