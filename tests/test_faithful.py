"""A run is the shipped recipe's experiment only when every key that defines the experiment is equal."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bnnctl.faithful import NEUTRAL_KEYS, differences, experiment_digest, flatten, variant_difference
from bnnctl.recipe import load_recipe, resolve

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped() -> dict:
    return load_recipe(REPO / "recipes" / "mnist_torch7.yaml").to_dict()


def test_neutral_keys_are_keys_of_the_recipe(shipped):
    keys = set(flatten(shipped))
    assert set(NEUTRAL_KEYS) <= keys
    # Rounding switches are never neutral: they change the numbers.
    assert not {"fast.bf16", "fast.tf32", "fast.sync_bn", "fast.compile"} & set(NEUTRAL_KEYS)


def test_the_fast_preset_seed_and_paths_keep_a_run_faithful(shipped):
    run = load_recipe(REPO / "recipes" / "mnist_torch7.yaml",
                      ["fast.fused_step=true", "fast.int8_forward=true", "fast.reuse_memory=true", "seed=3",
                       "train.checkpoint_every=5", "train.eval_batch_size=500", "data.source=npz",
                       "data.npz=/somewhere/mnist.npz"]).to_dict()
    assert differences(run, shipped) == []
    assert experiment_digest(run) == experiment_digest(shipped)


@pytest.mark.parametrize("override,key", [
    ("model.hidden=[16]", "model.hidden"), ("data.limit_train=1000", "data.limit_train"),
    ("train.epochs=20", "train.epochs"), ("optimizer.lr=0.5", "optimizer.lr"), ("fast.bf16=true", "fast.bf16"),
    ("schedule.epochs=null", "schedule.epochs"), ("fast.tf32=true", "fast.tf32")])
def test_any_other_difference_is_named(shipped, override, key):
    run = load_recipe(REPO / "recipes" / "mnist_torch7.yaml", [override]).to_dict()
    found = differences(run, shipped)
    assert [d.key for d in found] == [key]
    assert experiment_digest(run) != experiment_digest(shipped)
    assert found[0].describe().startswith(f"{key}: ")


def test_an_int_and_a_float_of_one_value_agree(shipped):
    run = {**shipped, "optimizer": {**shipped["optimizer"], "lr": float(shipped["optimizer"]["lr"])},
           "train": {**shipped["train"], "epochs": 200.0}}
    assert differences(run, shipped) == []
    assert experiment_digest(run) == experiment_digest(shipped)
    assert [d.key for d in differences({**shipped, "train": {**shipped["train"], "epochs": True}}, shipped)] \
        == ["train.epochs"]


def test_a_missing_key_is_a_difference(shipped):
    run = {k: v for k, v in shipped.items() if k != "schedule"}
    assert {d.key for d in differences(run, shipped)} == {f"schedule.{k}" for k in shipped["schedule"]}


def test_a_stand_in_dataset_is_a_difference():
    assert variant_difference("cifar10", "cifar10") is None
    assert variant_difference("cifar10", "cifar10-jpeg").describe() == \
        'dataset variant: "cifar10-jpeg" (shipped: "cifar10")'


def test_every_recorded_run_of_a_shipped_recipe_is_judged():
    """The committed record: each run's recipe.yaml loads; the full-schedule Torch7 run is faithful."""
    judged = {}
    for path in sorted((REPO / "results").glob("*/*/recipe.yaml")):
        recorded = resolve(yaml.safe_load(path.read_text()), str(path)).to_dict()
        shipped = REPO / "recipes" / f"{recorded['name']}.yaml"
        if shipped.is_file():
            judged[path.parent.relative_to(REPO / "results").as_posix()] = differences(recorded,
                                                                                        load_recipe(shipped).to_dict())
    assert judged["mnist_torch7/cpu-200ep-fast-s0"] == []
    assert [d.key for d in judged["mnist/cpu-20ep-s0"]] == ["train.epochs"]


def test_a_run_records_whether_it_is_the_shipped_experiment(shipped):
    from bnnctl.faithful import experiment_fields

    fields = experiment_fields(shipped, "mnist", "mnist")
    assert fields["faithful_to_shipped"] is True
    assert fields["experiment_sha256"] == fields["shipped_experiment_sha256"] == experiment_digest(shipped)
    assert experiment_fields(shipped, "mnist", "mnist-other")["faithful_to_shipped"] is False
    narrow = load_recipe(REPO / "recipes" / "mnist_torch7.yaml", ["model.hidden=[16]"]).to_dict()
    assert experiment_fields(narrow, "mnist", "mnist")["faithful_to_shipped"] is False
    mine = {**shipped, "name": "my_own_recipe"}
    assert experiment_fields(mine, "mnist", "mnist") == {
        "experiment_sha256": experiment_digest(mine), "shipped_experiment_sha256": None, "faithful_to_shipped": False}
