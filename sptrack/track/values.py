"""Plain values for trackers: what :mod:`~sptrack.track.params` and :mod:`~sptrack.track.redact` both turn values into.

A leaf module (it imports nothing of sptrack), so the redaction code can use it without importing
``params``, which re-exports the redaction names.
"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from dataclasses import asdict, is_dataclass
from typing import Any


def plain(value: Any) -> Any:
    """Namespaces and dataclass instances as dicts, 0-d tensors and numpy scalars as numbers; the rest as is."""
    if isinstance(value, Namespace):
        return vars(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # 0-d tensors / numpy scalars
    return value


def scalar(value: Any) -> Any:
    """A tracker-friendly scalar: numbers, bools, strings and None stay; everything else becomes a string."""
    value = plain(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return str(value)


def compact_json(value: Any) -> str:
    """``value`` as compact JSON, anything JSON cannot hold as its :func:`scalar`."""
    return json.dumps(value, default=lambda v: scalar(v), separators=(",", ":"), sort_keys=False)
