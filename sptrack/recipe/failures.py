"""Turn what a user can fix into one ``<key>: <what is wrong>. <fix>`` line; leave bugs as tracebacks.

The CLI prints these lines as ``error: ...`` with exit status 2. ``--traceback`` (or the
environment variable ``SPTRACK_TRACEBACK=1``) re-raises instead, for bug reports.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

from sptrack.errors import ConfigError

TRACEBACK_ENV = "SPTRACK_TRACEBACK"


def wants_traceback(argv: list[str]) -> bool:
    """``--traceback`` on the command line, or ``SPTRACK_TRACEBACK`` set to anything but ``""``/``0``."""
    return "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def one_line(err: BaseException) -> Optional[str]:
    """The line to print for an error the user can act on, or None for anything else (a bug)."""
    if isinstance(err, ConfigError):
        return _flat(str(err))
    tracker_errors = sys.modules.get("sptrack.track.base")
    if tracker_errors is not None and isinstance(err, tracker_errors.TrackerError):
        key = "tracker.uri" if isinstance(err, tracker_errors.TrackerUnreachableError) else "tracker"
        return f"{key}: {_flat(str(err))}"
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning_errors is not None and isinstance(err, lightning_errors.MisconfigurationException):
        # Lightning's own checks of the Trainer arguments (e.g. an accelerator this machine lacks).
        return f"trainer: {_flat(str(err)).rstrip('.')}. Change the trainer.* settings it names."
    return None


def recipe_failure(path: Path, err: BaseException, stage: str) -> ConfigError:
    """A ConfigError naming the recipe file and the line of it where ``err`` was raised during ``stage``."""
    if isinstance(err, SyntaxError) and err.filename and Path(err.filename).resolve() == path.resolve():
        where = f"{path.name}:{err.lineno}"
        what = f"SyntaxError: {err.msg}"
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        where = f"{path.name}:{frames[-1].lineno}" if frames else path.name
        what = f"{type(err).__name__}: {_flat(str(err))}" if str(err) else type(err).__name__
    return ConfigError(f"recipe {where}", f"{stage} failed with {what.rstrip('.')}.",
                       "Fix the recipe (or the value it was given); --traceback shows the stack.")
