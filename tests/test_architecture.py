"""The package's layering (pyproject.toml's import-linter contracts): no cycles, no upward imports."""
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parent.parent


def test_every_module_imports_only_from_the_layers_below_it():
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0
