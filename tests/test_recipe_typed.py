"""The typed recipe: frozen sections read by attribute, the schema and recipe.yaml derived from them,
the checks across fields; the training step built from it and the Trainer's epoch-end hook."""
import dataclasses

import pytest
import torch
import yaml
from rich.console import Console

from bnnctl.core.layers import binary_layers
from bnnctl.errors import UserError
from bnnctl.recipe import SCHEMA, Field, ModelConfig, Recipe, RecipeError, dump_recipe, load_recipe, resolve
from bnnctl.train.step import build_step, check_device

from .conftest import REPO

RECORDED = sorted(REPO.glob("results/*/*/recipe.yaml"))


def test_a_resolved_recipe_is_frozen_and_read_by_attribute():
    r = load_recipe(REPO / "recipes" / "mnist_torch7.yaml")
    assert isinstance(r, Recipe) and isinstance(r.model, ModelConfig)
    assert r.optimizer.name == "shift_adamax" and r.model.norm == "shift_bn" and r.train.epochs == 200
    assert r.optimizer.betas == (0.9, 0.999) and isinstance(r.model.hidden, tuple)  # lists are tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.model = r.model
    with pytest.raises(TypeError):
        r["train"]  # noqa: B018  (no mapping access: code reads recipe.train)


def test_the_schema_comes_from_the_dataclasses():
    sections = {f.name for f in dataclasses.fields(Recipe) if f.name in Recipe.SECTIONS}
    assert sections == {"paper", "data", "model", "train", "optimizer", "schedule", "fast"}
    assert list(SCHEMA) == [f.name for f in dataclasses.fields(Recipe)]
    for name in sections:
        cls = Recipe.SECTIONS[name]
        assert list(SCHEMA[name]) == [f.name for f in dataclasses.fields(cls)]
        for f in dataclasses.fields(cls):
            assert SCHEMA[name][f.name] is f.metadata["field"] and isinstance(SCHEMA[name][f.name], Field)
    assert SCHEMA["train"]["checkpoint_every"].help == "epochs between checkpoints"
    assert "shift_adamax" in SCHEMA["optimizer"]["name"].choices
    # a default of the dataclass is the schema's default (a list's as a tuple)
    assert ModelConfig(arch="mlp").kernel_size == 3 and ModelConfig(arch="mlp").hidden == ()


def test_recipe_yaml_round_trips(tmp_path):
    for name in ("mnist", "cifar10_torch7", "svhn"):
        r = load_recipe(REPO / "recipes" / f"{name}.yaml", ["fast.fused_step=true", "data.variant=x"])
        text = dump_recipe(r)
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        again = load_recipe(path)
        assert again == r and dump_recipe(again) == text
        assert yaml.safe_load(text) == r.to_dict() and resolve(r.to_dict()) == r


@pytest.mark.parametrize("path", RECORDED, ids=[str(p.relative_to(REPO)) for p in RECORDED])
def test_every_recorded_run_recipe_loads(path):
    recorded = yaml.safe_load(path.read_text())
    r = load_recipe(path)
    resolved = r.to_dict()
    for section, values in recorded.items():  # every recorded value kept; fields added since take defaults
        if isinstance(values, dict):
            assert {k: resolved[section][k] for k in values} == values, section
        else:
            assert resolved[section] == values, section
    assert resolve(yaml.safe_load(dump_recipe(r)), str(path)) == r


def test_recorded_run_recipes_exist():
    assert len(RECORDED) >= 5  # the parametrized test above would otherwise pass on nothing


@pytest.mark.parametrize("overrides, message", [
    (["fast.int8_forward=true"], "fast.int8_forward multiplies with the signs fast.fused_step keeps; set "
                                 "fast.fused_step=true too."),
    (["fast.fused_step=true", "fast.compile=true"], "fast.fused_step and fast.compile exclude each other; choose one."),
])
def test_fast_switches_that_exclude_each_other_are_refused_by_the_recipe(overrides, message):
    path = REPO / "recipes" / "mnist.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert str(info.value) == f"{path}: {message}"


def test_the_step_builder_refuses_what_this_device_cannot_run():
    r = load_recipe(REPO / "recipes" / "mnist.yaml", ["fast.fused_step=true"])
    check_device(r, torch.device("cpu"))
    with pytest.raises(UserError, match="fast.fused_step is a CPU path"):
        check_device(r, torch.device("cuda"))
    r = load_recipe(REPO / "recipes" / "mnist.yaml", ["fast.compile=true", "fast.compile_mode=reduce-overhead"])
    check_device(r, torch.device("cpu"))
    with pytest.raises(UserError, match="replays CUDA graphs"):
        check_device(r, torch.device("cuda"))


def test_build_step_is_seeded_and_takes_the_fused_pieces(tiny_recipe):
    r = load_recipe(tiny_recipe, ["fast.fused_step=true", "fast.foreach_clip=false"])
    plain = build_step(load_recipe(tiny_recipe), (1, 8, 8), 10, torch.device("cpu"))
    fused = build_step(r, (1, 8, 8), 10, torch.device("cpu"))
    for a, b in zip(plain.model.state_dict().values(), fused.model.state_dict().values()):
        assert torch.equal(a, b)  # the recipe's seed, whatever the switches
    assert not plain.clipped_by_optimizer and plain.binary_layers
    assert fused.clipped_by_optimizer == {id(layer.weight) for layer in binary_layers(fused.model)}
    assert fused.binary_layers == []  # the fused optimizer clips every binary weight itself


def test_epoch_end_hook_sees_every_epoch_and_where_its_time_went(tiny_recipe, tmp_path):
    from bnnctl.train.loop import run_training

    seen = []
    result = run_training(recipe=tiny_recipe, overrides=["train.checkpoint_every=2"], device="cpu", data_dir=None,
                          runs_dir=tmp_path / "runs", resume=None, seed=None, run_id="hooked",
                          console=Console(quiet=True),
                          on_epoch_end=[lambda trainer, row, times: seen.append((trainer.epoch, dict(row), times))])
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3] and result["epochs_run"] == 3
    for epoch, row, times in seen:
        assert times.epoch == epoch == row["epoch"]
        assert times.checkpointed == (epoch in (2, 3))  # every 2nd epoch and the last
        assert min(times.training_s, times.evaluation_s, times.records_s) > 0 and times.best_save_s >= 0
        assert row["epoch_time_s"] == pytest.approx(times.training_s + times.evaluation_s, abs=1e-3)
    assert seen[0][2].ended < seen[1][2].ended < seen[2][2].ended
    assert (tmp_path / "runs" / "tiny" / "hooked" / "recipe.yaml").read_text() == dump_recipe(
        load_recipe(tiny_recipe, ["train.checkpoint_every=2", "data.variant=" + result["variant"]]))
