from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ssl_toolkit.config import ConfigError, load_config, save_config, to_dict
from ssl_toolkit.pretrain import main as pretrain_main
from ssl_toolkit.process.status import ExitCode

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def test_recipe_values_and_typed_overrides():
    config = load_config(
        QUICKSTART,
        [
            "train.batch_size=64",
            "optim.lr=1e-3",
            "log.trackers=[wandb,tensorboard]",
            "train.max_steps=null",
            "model.cifar_stem=true",
            "seed=7",
            "loss.temperature=0.05",
        ],
    )
    assert config.data.name == "digits"
    assert config.train.batch_size == 64 and isinstance(config.train.batch_size, int)
    assert config.optim.lr == pytest.approx(1e-3) and isinstance(config.optim.lr, float)
    assert config.log.trackers == ["wandb", "tensorboard"]
    assert config.train.max_steps is None
    assert config.model.cifar_stem is True
    assert config.seed == 7
    assert config.loss.options == {"temperature": 0.05}


@pytest.mark.parametrize(
    ("override", "named", "listed"),
    [
        ("train.bath_size=8", "train.bath_size", "train.batch_size"),
        ("trian.batch_size=8", "trian", "train"),
        ("loss.temprature=0.1", "loss.temprature", "loss.temperature"),
        ("sed=1", "sed", "seed"),
    ],
)
def test_unknown_keys_name_the_key_and_list_the_valid_ones(override, named, listed):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, [override])
    assert named in str(error.value)
    assert listed in str(error.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("optim.name=adam", "optim.name"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("loss.name=nosuchloss", "loss.name"),
        ("loss.temperature=hot", "loss.temperature"),
        ("augment.n_views=1", "augment.n_views"),
        ("model.cifar_stem=maybe", "model.cifar_stem"),
        ("train.batch_size", "train.batch_size"),
    ],
)
def test_bad_values_are_rejected_with_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(QUICKSTART, [override])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.grad_cache_chunk=-1"], "train.grad_cache_chunk"),
        (["augment.n_views=3"], "loss.name=ntxent takes exactly 2 views"),
        (["augment.small_crops=2"], "loss.name=ntxent takes exactly 2 views"),
        (["loss.supervised=true"], "loss.supervised=true needs a label-based loss"),
        (["loss.name=arcface"], "loss.name=arcface needs class labels"),
        (["optim.lr=-1"], "optim.lr"),
        (["log.knn_every=-1"], "log.knn_every"),
    ],
)
def test_rules_that_need_only_the_config_fail_in_load_config(overrides, named, monkeypatch):
    # Nothing is built: an Accelerator or a dataset here would mean the rule came too late.
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", None)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, overrides)  # the defaults: SimCLR's NT-Xent on 2 views


def test_unknown_key_in_a_recipe_names_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(recipe)
    assert "train.epoch" in str(error.value) and str(recipe) in str(error.value)


def test_missing_recipe():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(REPO / "recipes" / "nope.yaml")


def test_a_packaged_recipe_is_found_by_its_name():
    assert to_dict(load_config("quickstart")) == to_dict(load_config(QUICKSTART))
    assert to_dict(load_config("quickstart.yaml")) == to_dict(load_config(QUICKSTART))
    with pytest.raises(ConfigError, match="quickstart"):  # the message lists the packaged recipes
        load_config("quickstrat")


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(QUICKSTART, ["train.epochs=3", "loss.temperature=0.3"])
    save_config(config, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["loss"] == {
        "name": "ntxent",
        "supervised": False,
        "temperature": 0.3,
    }


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    load_config(recipe)


def test_mistyped_key_stops_the_command_with_a_message_and_no_traceback(capsys):
    assert pretrain_main([str(QUICKSTART), "train.bath_size=8"]) == ExitCode.BAD_INPUT
    errors = capsys.readouterr().err
    assert "train.bath_size" in errors and "train.batch_size" in errors
    assert len(errors.strip().splitlines()) == 1 and "Traceback" not in errors


def test_docs_config_md_describes_every_key():
    import dataclasses

    from ssl_toolkit.config import SECTIONS, Config

    documented = (REPO / "docs" / "config.md").read_text()
    keys = ["seed"] + [
        f"{section}.{field.name}"
        for section in SECTIONS
        for field in dataclasses.fields(getattr(Config(), section))
        if field.name != "options"  # the loss's own arguments, described in docs/losses.md
    ]
    missing = [key for key in keys if f"`{key}`" not in documented]
    assert not missing, f"docs/config.md does not describe {missing}"


def test_a_loss_that_does_not_take_the_recipes_option_says_how_to_drop_it():
    with pytest.raises(
        ConfigError, match=r"unknown key loss.temperature for loss 'triplet'.*loss.temperature=null"
    ):
        load_config(QUICKSTART, ["loss.name=triplet"])
    assert load_config(QUICKSTART, ["loss.name=triplet", "loss.temperature=null"]).loss.options == {}
