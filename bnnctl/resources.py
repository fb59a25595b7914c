"""Where the files bnnctl ships beside its code are: the recipes and the native kernel sources.

In a checkout they are ``recipes/`` and ``cuda/`` at the top of the repository (the layout users
know; an editable install runs from there). A wheel carries the same files inside the package, as
``bnnctl/recipes/`` and ``bnnctl/cuda/`` (``pyproject.toml`` maps them there), so an installed
bnnctl lists its recipes and builds its kernels anywhere.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder of shipped ``name`` files ("recipes" or "cuda"): inside the package when installed
    from a wheel, else the checkout's top-level folder."""
    installed = PACKAGE / name
    if installed.is_dir():
        return installed
    return PACKAGE.parent / name
