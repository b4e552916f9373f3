"""Path helpers shared by the run directory and sweeps (no heavy imports)."""

from __future__ import annotations

from pathlib import Path


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None.

    What a command creates below it is all its own, so a start that fails can remove exactly that.
    """
    path = path.absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing
