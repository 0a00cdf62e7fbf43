"""Where tlgates keeps generated data and cached models."""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The cache folder: ``$TLGATES_DATA`` if set, else ``data/`` of the checkout.

    When tlgates is installed outside a checkout (no ``pyproject.toml`` beside the package),
    the cache goes to ``~/.cache/tlgates``.
    """
    if os.environ.get("TLGATES_DATA"):
        path = Path(os.environ["TLGATES_DATA"]).expanduser()
    elif (_REPO_ROOT / "pyproject.toml").exists():
        path = _REPO_ROOT / "data"
    else:
        path = Path.home() / ".cache" / "tlgates"
    path.mkdir(parents=True, exist_ok=True)
    return path
