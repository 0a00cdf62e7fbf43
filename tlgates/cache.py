"""Cache files under ``tlgates.paths.data_dir()``: written atomically, read back only when they
are what was asked for.

Every cache (glyph pixels, the source models, DELTA's channel attention) is a dict saved with
``torch.save`` and loaded with ``torch.load(..., weights_only=True)``, with a ``version`` that
says which format of the code wrote it. A file that is missing is simply rebuilt; one that is
there but unusable (corrupt, from another version, made with other settings) is rebuilt with a
one-line warning that says what it was, that it is being rebuilt and about how long that takes.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def save(path: Path, payload: dict[str, Any], *, version: int) -> None:
    """``torch.save`` ``{"version": version, **payload}`` to a temporary file, then rename it:
    readers never see half a file, and concurrent writers do not collide. A folder that cannot
    be written gets a warning (the caller keeps what it computed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"version": version, **payload}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the cache file {path}: {err}", stacklevel=3)


def load(path: Path, *, version: int, what: str, rebuild: str,
         matches: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """The dict saved at ``path`` if it is readable, of ``version`` and ``matches`` it;
    otherwise ``None``.

    Args:
        path: the cache file.
        version: the format the caller writes.
        what: what the file holds, for the warning ("source model").
        rebuild: what the caller does instead, with about how long ("training it again,
            about a minute").
        matches: whether a readable file of the right version was made with the settings
            asked for (an exception inside counts as no).
    """
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch's own advice about the file is not for users
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
        reason = None if isinstance(saved, dict) else "corrupt"
    except Exception:  # truncated zip, foreign pickle, not a torch file at all
        reason = "corrupt"
    if reason is None and saved.get("version") != version:
        reason = f"from another version of tlgates (format {saved.get('version')!r})"
    if reason is None and matches is not None:
        try:
            reason = None if matches(saved) else "made with other settings"
        except Exception:
            reason = "made with other settings"
    if reason is None:
        return saved
    warnings.warn(f"the cached {what} {path.name} is {reason}; {rebuild}", stacklevel=3)
    return None
