"""CLI conventions: `bnnctl --version`, and `bnnctl runs` listing runs as the report judges them."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import bnnctl
from bnnctl.cli import app
from tests.test_report import write_run

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_version():
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.strip() == f"bnnctl {bnnctl.__version__}"


def test_runs_lists_each_run_faithful_or_with_the_keys_it_changed(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "mnist", "shipped", "mnist", "mnist", [(0.5, 5.0, 5.5)], planned=1000,
              recipes=REPO / "recipes")
    write_run(runs, "mnist", "narrow", "mnist", "mnist", [(0.5, 4.0, 4.5)], recipes=REPO / "recipes",
              sets=["model.hidden=[16]"])
    (runs / "mnist" / "broken").mkdir()
    (runs / "mnist" / "broken" / "result.json").write_text("{")
    done = runner.invoke(app, ["runs", str(runs)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    lines = {line.split("│")[1].strip(): line for line in done.output.splitlines() if line.startswith("│")}
    assert "running" in lines["mnist/shipped"] and "1/1000" in lines["mnist/shipped"]
    assert "faithful" in lines["mnist/shipped"] and "5.50" in lines["mnist/shipped"]
    assert "modified: model.hidden, train.epochs" in lines["mnist/narrow"]
    assert "skipped: mnist/broken/result.json" in done.output
    missing = runner.invoke(app, ["runs", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "is not a folder of runs" in missing.output


# ---------------------------------------------------------------------------- shell completion

def complete(line: str) -> list[str]:
    """What bash completion offers for the last word of ``line``, through click's _BNNCTL_COMPLETE protocol."""
    words = line.split(" ")
    done = runner.invoke(app, [], prog_name="bnnctl", env={
        "_BNNCTL_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    assert done.exit_code == 0, done.output
    return [word for word in done.output.split("\n") if word]


def test_completion_is_installable_and_its_script_calls_back_into_bnnctl():
    assert "--install-completion" in runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="bnnctl")
    assert script.exit_code == 0 and "_BNNCTL_COMPLETE=complete_bash" in script.output


def test_recipes_complete_to_the_files_under_recipes_and_the_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes" / "mine").mkdir(parents=True)
    for name in ("mnist_wide.yaml", "cifar_small.yaml", "notes.txt"):
        (tmp_path / "recipes" / name).write_text("name: x\n")
    (tmp_path / "recipes" / "mine" / "deep.yaml").write_text("name: x\n")
    shipped = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert complete("bnnctl train ") == ["recipes/cifar_small.yaml", "recipes/mnist_wide.yaml", *shipped]
    assert complete("bnnctl train recipes/") == ["recipes/cifar_small.yaml", "recipes/mine/", "recipes/mnist_wide.yaml"]
    assert complete("bnnctl train recipes/mine/") == ["recipes/mine/deep.yaml"]
    assert complete("bnnctl train mnist_t") == ["mnist_torch7"]
    assert complete("bnnctl summary recipes/m") == ["recipes/mine/", "recipes/mnist_wide.yaml"]
    assert complete("bnnctl train nothing") == []


def test_choices_complete_to_what_the_commands_accept():
    from bnnctl.bench.kernels import KERNELS
    from bnnctl.bench.model_bench import SPECS
    from bnnctl.infer.evaluate import ENGINES, SPLITS
    from bnnctl.provenance import DEVICES

    for command in ("train r.yaml", "eval run", "bench"):
        assert complete(f"bnnctl {command} --device ") == list(DEVICES)
    assert complete("bnnctl train r.yaml --device c") == ["cpu", "cuda"]
    assert complete("bnnctl eval run --engine ") == list(ENGINES)
    assert complete("bnnctl eval run --split ") == list(SPLITS)
    assert complete("bnnctl bench --model ") == list(SPECS)
    variants = list(SPECS["cifar10-convnet"].variants)
    assert complete("bnnctl bench --model cifar10-convnet --variant ") == ["all", *variants]
    assert complete(f"bnnctl bench --model cifar10-convnet --variant {variants[0]},") == \
        [f"{variants[0]},{v}" for v in variants[1:]]
    assert complete("bnnctl bench --kernel xnor,xnor-") == [f"xnor,{k}" for k in KERNELS if k.startswith("xnor-")]


# ---------------------------------------------------------------------------- flags

def test_flags_read_as_plain_flags_in_every_help():
    import typer.main

    group = typer.main.get_command(app)
    for name in [None, *group.commands]:
        shown = runner.invoke(app, [*([name] if name else []), "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "<bool>" not in shown.output and "--no-" not in shown.output, name
    fast = [line for line in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.splitlines()
            if "--fast" in line]
    assert len(fast) == 1 and fast[0].split("--fast")[1].split()[0] == "switch", fast


# ---------------------------------------------------------------------------- recipe keys

def key_rows(*args: str) -> dict[str, list[str]]:
    """`bnnctl keys` as {key: [takes, default, help]}: its columns are two or more spaces apart, a help that
    goes on in the next line starts it with spaces."""
    import re

    done = runner.invoke(app, ["keys", *args])
    assert done.exit_code == 0, done.output
    rows = [re.split(r"\s{2,}", line.strip()) for line in done.output.splitlines()[2:] if line[:1].strip()]
    return {row[0]: row[1:] for row in rows}


def test_keys_lists_every_field_of_every_section_with_its_default():
    import dataclasses

    from bnnctl.recipe import REQUIRED, Recipe
    from bnnctl.recipe.loading import RecipeLoader

    rows = key_rows()
    expected = []
    for item in dataclasses.fields(Recipe):
        section = Recipe.SECTIONS.get(item.name)
        for field in dataclasses.fields(section) if section else [item]:
            key = f"{item.name}.{field.name}" if section else field.name
            default = field.metadata["field"].default
            expected.append(key)
            shown = rows[key][1]
            if default is REQUIRED:
                assert shown == "required", key
            else:
                assert RecipeLoader.read(shown, key) == (list(default) if isinstance(default, tuple) else default), key
    assert list(rows) == expected
    assert rows["data.dataset"][0] == "mnist | cifar10 | svhn"
    assert rows["optimizer.betas"][0] == "[number, number], each at least 0 and less than 1"
    assert rows["data.limit_train"][0] == "int, at least 1, or null"


def test_keys_finds_the_keys_that_shorten_a_run_and_refuses_a_word_none_has():
    shorten = key_rows("shorten")
    assert {"train.epochs", "data.limit_train", "data.limit_test", "data.train_size"} == set(shorten)
    everything = key_rows()
    optimizer = key_rows("Optimizer")
    assert {k for k in everything if k.startswith("optimizer.")} < set(optimizer)
    assert all("optimizer" in f"{key} {everything[key][-1]}".lower() for key in optimizer)
    none = runner.invoke(app, ["keys", "zzz"])
    assert none.exit_code == 2 and "no recipe key has 'zzz'" in none.output
    assert "keys" in runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output


# ---------------------------------------------------------------------------- did you mean

MNIST = str(REPO / "recipes" / "mnist.yaml")


@pytest.mark.parametrize("args,message", [
    (["train", "recipes/mnst.yaml"], "recipe file recipes/mnst.yaml does not exist; did you mean "
                                     "'recipes/mnist.yaml'?"),
    (["train", "mnist_torch"], "recipe mnist_torch is neither a file nor a shipped recipe; did you mean "
                               "'mnist_torch7'?"),
    (["summary", "cifar_10"], "recipe cifar_10 is neither a file nor a shipped recipe; did you mean 'cifar10'?"),
    (["train", MNIST, "--set", "optimzer.lr=1"], "unknown key 'optimzer.lr'; did you mean 'optimizer.lr'?"),
    (["train", MNIST, "--set", "train.epoch=1"], "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    (["train", MNIST, "--set", "model.arch=mpl"], "'model.arch' must be one of mlp, convnet, got 'mpl'; did you mean "
                                                  "'mlp'?"),
    (["train", MNIST, "--set", "data.preprocess=zcaa"], "got 'zcaa'; did you mean 'zca'?"),
    (["train", MNIST, "--device", "cpux"], "--device must be auto, cpu or cuda, got 'cpux'; did you mean 'cpu'?"),
    (["eval", "nowhere", "--engine", "xnr"], "--engine must be float or xnor, got 'xnr'; did you mean 'xnor'?"),
    (["eval", "nowhere", "--split", "vaild"], "--split must be test or valid, got 'vaild'; did you mean 'valid'?"),
    (["bench", "--model", "mnist-mpl"], "unknown --model 'mnist-mpl'; choose mnist-mlp, cifar10-convnet, "
                                        "svhn-convnet; did you mean 'mnist-mlp'?"),
    (["bench", "--model", "mnist-mlp", "--variant", "xnor-bitplan", "--device", "cpu"],
     "unknown variant xnor-bitplan for --variant; choose from all, ... ; did you mean 'xnor-bitplane'?"),
])
def test_a_mistyped_name_gets_the_closest_one_in_the_same_sentence(args, message, tmp_path, monkeypatch):
    """(' ... ' in a message stands for any text: the list of a table that may grow.)"""
    monkeypatch.chdir(REPO)
    done = runner.invoke(app, [*args, *(["--runs-dir", str(tmp_path)] if args[0] == "train" else [])],
                         env={"COLUMNS": "400"})
    assert done.exit_code == 2, done.output
    assert all(part in done.output for part in message.split(" ... ")), done.output
    assert done.output.count("\n") == 1 and done.output.rstrip().endswith("?"), done.output


def test_a_mistyped_kernel_gets_the_closest_one():
    from bnnctl.bench.kernels import KERNELS
    from bnnctl.bench.timing import parse_names
    from bnnctl.errors import UserError

    with pytest.raises(UserError, match=r"^unknown kernel xnr; choose from all, .*; did you mean 'xnor'\?$"):
        parse_names("xnr", KERNELS, "kernel")


def test_unknown_keys_in_a_recipe_file_get_the_closest_key(tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "mnist.yaml").read_text())
    for typo, key, close in [("hiden", "model.hiden", "model.hidden"), (None, "optimzer", "optimizer")]:
        broken = {**recipe, "model": {**recipe["model"], typo: [8]}} if typo else \
            {**{k: v for k, v in recipe.items() if k != "optimizer"}, "optimzer": recipe["optimizer"]}
        path = tmp_path / "typo.yaml"
        path.write_text(yaml.safe_dump(broken))
        done = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
        assert done.exit_code == 2
        assert f"{path}: unknown key '{key}'; did you mean '{close}'?" in done.output, done.output
    far = {**recipe, "model": {**recipe["model"], "zzzz": 1}}
    path.write_text(yaml.safe_dump(far))
    done = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")], env={"COLUMNS": "400"})
    assert done.exit_code == 2 and "unknown key 'model.zzzz' (allowed here: arch, " in done.output
    assert "did you mean" not in done.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["train", MNIST, "--set", "zzz.q=1"], ["train", "zzzzz"],
                                  ["bench", "--model", "resnet"], ["eval", "nowhere", "--engine", "qqq"]])
def test_a_name_close_to_none_gets_no_guess(args, tmp_path):
    done = runner.invoke(app, [*args, *(["--runs-dir", str(tmp_path)] if args[0] == "train" else [])])
    assert done.exit_code == 2 and "did you mean" not in done.output and done.output.startswith("error: ")
