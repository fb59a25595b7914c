"""The wheel carries everything an installed bnnctl needs: its subpackages, the recipes and the kernel sources."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, cwd=out)
    (path,) = out.glob("bnnctl-*.whl")
    return path


def test_the_wheel_holds_every_subpackage_the_recipes_and_the_kernel_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (REPO / "bnnctl").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names
    for recipe in (REPO / "recipes").glob("*.yaml"):
        assert f"bnnctl/recipes/{recipe.name}" in names
    sources = [path for pattern in ("*.cpp", "*.cu", "*.h", "*.c", "CMakeLists.txt")
               for path in (REPO / "cuda").rglob(pattern)]
    assert any(source.parent != REPO / "cuda" for source in sources)  # the subfolders are searched
    for source in sources:
        assert f"bnnctl/cuda/{source.relative_to(REPO / 'cuda').as_posix()}" in names


@pytest.mark.slow
def test_an_installed_wheel_lists_loads_and_builds_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "BNNCTL_BUILD_DIR": str(tmp_path / "build")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = run("-m", "bnnctl", "recipes")
    assert all(name in listing for name in ("mnist.yaml", "cifar10_torch7.yaml", "svhn.yaml"))
    probe = ("import bnnctl, torch; from bnnctl.recipe import load_recipe; from bnnctl import kernels\n"
             "print(bnnctl.__file__); print(load_recipe('mnist_torch7').name)\n"
             "a = torch.tensor([[1., -1., 1.]]); b = torch.tensor([[1., 1., -1.], [-1., 1., -1.]])\n"
             "print(kernels.xnor_gemm(kernels.pack(a), kernels.pack(b), 3).tolist())")
    lines = run("-c", probe).splitlines()
    assert lines[0].startswith(str(site)), lines[0]
    assert lines[1] == "mnist_torch7"
    assert lines[2] == "[[-1, -3]]"
