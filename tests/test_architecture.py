"""The package's layering (pyproject.toml's import-linter contracts): no cycles, no upward imports, no
imports between siblings; and importing the package leaves the process as it was."""
import os
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

from bnnctl.allocator import HUGE_PAGES_ENV

REPO = Path(__file__).resolve().parent.parent


def test_every_module_imports_only_from_the_layers_below_it():
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0


def _run_python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    out = subprocess.run([sys.executable, "-c", code], env={**environ, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.strip()


def test_importing_bnnctl_and_every_module_in_it_changes_no_environment_variable():
    changed = _run_python(
        "import importlib, os, pkgutil\n"
        "before = dict(os.environ)\n"
        "import bnnctl\n"
        "for m in pkgutil.walk_packages(bnnctl.__path__, 'bnnctl.'):\n"
        "    if m.name != 'bnnctl.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "after = dict(os.environ)\n"
        "print(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))\n")
    assert changed == "[]"


def test_the_command_line_asks_for_huge_pages_before_torch_allocates_and_a_callers_setting_wins():
    code = ("import os, sys\n"
            "from bnnctl.cli import app\n"
            "assert 'torch' not in sys.modules\n"
            "app(['recipes'], standalone_mode=False)\n"
            f"print(os.environ.get({HUGE_PAGES_ENV!r}))\n")
    assert _run_python(code).splitlines()[-1] == "1"
    assert _run_python(code, **{HUGE_PAGES_ENV: "0"}).splitlines()[-1] == "0"
