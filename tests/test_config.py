"""Recipe validation: every mistake is one ConfigError line that names the key and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import Config, load_config, parse_override, to_yaml
from tuneforge.errors import ConfigError, TuneforgeError


def base(**sections) -> dict:
    recipe = {"model": {"name": "some-model"}, "data": {"dir": "some/dir"}}
    recipe.update(sections)
    return recipe


def config_error(recipe, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    msg = str(info.value)
    assert "\n" not in msg, f"error must be a single line: {msg!r}"
    assert isinstance(info.value, TuneforgeError) and info.value.exit_code == 2
    return msg


def test_valid_recipe_defaults():
    cfg = load_config(base())
    assert isinstance(cfg, Config)
    assert cfg.task.type == "classification"
    assert cfg.model.name == "some-model" and cfg.model.source == "auto"
    assert cfg.train.optimizer == "adamw" and cfg.train.batch_size == 32
    assert cfg.data.label_column == "label" and cfg.data.on_bad_sample == "error"


def test_shorthands_for_task_and_model():
    cfg = load_config({"task": "classification", "model": "minilm-l6", "data": {"dir": "d"}})
    assert cfg.task.type == "classification"
    assert cfg.model.name == "minilm-l6"


def test_misspelt_key_names_path_and_suggests_fix():
    msg = config_error(base(data={"dirr": "x"}))
    assert "data.dirr" in msg
    assert "did you mean 'data.dir'" in msg
    assert "allowed:" in msg and "label_column" in msg


def test_misspelt_nested_key():
    msg = config_error(base(data={"dir": "d", "augment": {"hflipp": False}}))
    assert "data.augment.hflipp" in msg and "data.augment.hflip" in msg


def test_unknown_section():
    msg = config_error(base(trainer={"lr": 1e-3}))
    assert "unknown key 'trainer'" in msg
    assert "did you mean 'train'" in msg
    for section in ("task", "model", "data", "train", "eval", "early_stopping", "output"):
        assert section in msg


def test_unknown_section_without_close_match_lists_sections():
    msg = config_error(base(zzzz=1))
    assert "unknown key 'zzzz'" in msg and "did you mean" not in msg
    assert "early_stopping" in msg


def test_wrong_type():
    msg = config_error(base(train={"batch_size": "abc"}))
    assert "train.batch_size" in msg
    assert "integer" in msg
    assert "'abc'" in msg


@pytest.mark.parametrize("train, key, fragment", [
    ({"lr": -1e-3}, "train.lr", "greater than 0"),
    ({"lr": 0}, "train.lr", "greater than 0"),
    ({"batch_size": 0}, "train.batch_size", "greater than 0"),
    ({"grad_accum": 0}, "train.grad_accum", "greater than 0"),
    ({"warmup_ratio": 1.5}, "train.warmup_ratio", "less than 1"),
    ({"epochs": -1}, "train.epochs", "greater than 0"),
])
def test_bad_values(train, key, fragment):
    msg = config_error(base(train=train))
    assert key in msg and fragment in msg


def test_bad_value_in_other_sections():
    assert "data.val_split" in config_error(base(data={"dir": "d", "val_split": 1.0}))
    assert "task.label_smoothing" in config_error(base(task={"label_smoothing": -0.1}))
    assert "data.on_bad_sample" in config_error(base(data={"dir": "d", "on_bad_sample": "ignore"}))


def test_bad_choice_lists_allowed_values():
    msg = config_error(base(train={"optimizer": "adam"}))
    assert "train.optimizer" in msg
    assert "'adamw'" in msg and "'sgd'" in msg
    assert "'adam'" in msg  # what was given
    msg = config_error(base(train={"precision": "fp64"}))
    for choice in ("auto", "fp32", "bf16", "fp16"):
        assert choice in msg


def test_missing_model():
    msg = config_error({"data": {"dir": "d"}})
    assert "missing key 'model'" in msg


def test_missing_data():
    msg = config_error({"model": "m"})
    assert "data.dir" in msg and "data.source" in msg


def test_several_errors_stay_on_one_line():
    msg = config_error(base(train={"lr": 0, "batch_size": 0}, trainer={}))
    assert "+2 more" in msg
    assert "train.lr" in msg and "train.batch_size" in msg and "trainer" in msg


def test_recipe_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    msg = config_error(str(f))
    assert "mapping" in msg and str(f) in msg


def test_recipe_file_not_found(tmp_path):
    msg = config_error(str(tmp_path / "nope.yaml"))
    assert "not found" in msg and "nope.yaml" in msg


def test_recipe_invalid_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: {name: x\ndata: [\n")
    msg = config_error(str(f))
    assert "not valid YAML" in msg and "bad.yaml" in msg


def test_recipe_file_errors_name_the_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(base(data={"dirr": "x"})))
    msg = config_error(str(f))
    assert msg.startswith(str(f)) and "data.dirr" in msg


def test_recipe_file_sets_output_name(tmp_path):
    f = tmp_path / "my-recipe.yaml"
    f.write_text(yaml.safe_dump(base()))
    assert load_config(str(f)).output.name == "my-recipe"
    assert load_config(base()).output.name is None


# ------------------------------------------------------------------ overrides


def test_parse_override_is_yaml_typed():
    assert parse_override("train.lr=3e-5") == (["train", "lr"], 3e-05)
    assert isinstance(parse_override("train.lr=3e-5")[1], float)
    key, value = parse_override("train.epochs=2")
    assert key == ["train", "epochs"] and value == 2 and isinstance(value, int)
    assert parse_override("data.dir=x") == (["data", "dir"], "x")
    assert parse_override("data.group_by_length=false") == (["data", "group_by_length"], False)
    assert parse_override("train.betas=[0.8, 0.9]") == (["train", "betas"], [0.8, 0.9])
    assert parse_override("train.max_steps=") == (["train", "max_steps"], None)


def test_set_overrides_are_typed_after_validation():
    cfg = load_config(base(), ["train.lr=3e-5", "train.epochs=2", "data.dir=x", "train.batch_size=8",
                               "data.augment.hflip=false"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 3e-05
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert cfg.data.dir == "x"
    assert cfg.data.augment.hflip is False


def test_set_override_creates_missing_sections_and_replaces_shorthand():
    cfg = load_config({"model": "m", "data": {"dir": "d"}}, ["model.source=timm", "early_stopping.patience=5"])
    assert cfg.model.name == "m" and cfg.model.source == "timm"
    assert cfg.early_stopping.patience == 5


def test_set_override_errors():
    msg = config_error(base(), ["train.lr"])
    assert "KEY=VALUE" in msg
    msg = config_error(base(), ["train.lrr=1"])
    assert "train.lrr" in msg and "train.lr" in msg
    msg = config_error(base(), ["train.batch_size=abc"])
    assert "train.batch_size" in msg and "'abc'" in msg


def test_python_overrides_with_double_underscore():
    recipe = base()
    cfg = load_config(recipe, {"train__lr": 1e-3, "data__max_length": 64, "model__source": "hf"})
    assert cfg.train.lr == 1e-3
    assert cfg.data.max_length == 64
    assert cfg.model.source == "hf"
    assert recipe == base(), "load_config must not modify the caller's recipe dict"


def test_python_override_errors_are_config_errors():
    msg = config_error(base(), {"train__lr": -1.0})
    assert "train.lr" in msg
    msg = config_error(base(), {"train__optimiser": "sgd"})
    assert "train.optimiser" in msg and "train.optimizer" in msg


def test_to_yaml_round_trips():
    cfg = load_config(base(train={"lr": 1e-4, "betas": [0.8, 0.95]}))
    again = load_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    """Every recipe in recipes/ passes the schema (data.dir is the one key each leaves to the command line)."""
    cfg = load_config(recipe, ["data.dir=/some/data"])
    assert cfg.model.name and cfg.data.dir == "/some/data"
