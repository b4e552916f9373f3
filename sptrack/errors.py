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
