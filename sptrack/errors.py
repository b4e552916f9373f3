"""Configuration errors that name the offending key and suggest a fix."""

from __future__ import annotations

import difflib
from typing import Iterable


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (case-insensitive)."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def suggestion(name: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean ...?' sentence, or an empty string when nothing is close."""
    hits = close_matches(name, candidates)
    if not hits:
        return ""
    return " Did you mean " + " or ".join(repr(h) for h in hits) + "?"


class ConfigError(ValueError):
    """A user configuration is invalid.

    ``key`` is the dotted path of the offending entry (e.g. ``optim.backbone.optimizer``), so callers
    and tests can tell which entry was wrong without parsing the message.
    """

    def __init__(self, key: str, problem: str, fix: str = ""):
        self.key = key
        message = f"{key}: {problem}"
        if fix:
            message += f" {fix.strip()}"
        super().__init__(message)


def unknown_name_error(key: str, kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """Build the error for a name (optimizer, scheduler, option key) that does not exist."""
    valid = sorted(set(valid))
    hint = suggestion(name, valid)
    if not hint:
        shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
        hint = f" Valid {kind}s: {shown}."
    return ConfigError(key, f"unknown {kind} {name!r}.", hint)


#: pip installs of the SQLAlchemy drivers a database URL may need, by the module name an ImportError gives.
DRIVER_PACKAGES = {"psycopg": "'sptrack[postgres]'", "psycopg2": "psycopg2-binary", "pymysql": "pymysql", "MySQLdb": "mysqlclient"}


def missing_module(err: BaseException) -> "str | None":
    """The top-level module an ImportError, or what it was raised from (Optuna re-raises SQLAlchemy's), could not find."""
    while err is not None:
        if getattr(err, "name", None):
            return err.name.split(".")[0]
        err = err.__cause__ or err.__context__
    return None


def missing_driver_error(key: str, shown_url: str, err: ImportError, alternative: str = "") -> ConfigError:
    """The one-line error for a database URL whose driver is not installed (``shown_url`` has its password masked)."""
    module = missing_module(err) or "its driver"
    fix = f"Install it (pip install {DRIVER_PACKAGES.get(module, module)})" + (f" or {alternative}" if alternative else "") + "."
    return ConfigError(key, f"{shown_url} needs the database driver {module!r}, which is not installed.", fix)
