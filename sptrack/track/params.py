"""Hyper-parameters for trackers: flattening with dotted keys, secrets masked, optimizer summary rows.

Everything a tracker receives goes through :func:`prepare_params` (dicts) or :func:`redact_text`
(files such as the recipe), so API keys, tokens and passwords never reach MLflow or W&B. The
redaction itself lives in :mod:`sptrack.track.redact`; its public names are re-exported here.
"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from sptrack.track.redact import (  # noqa: F401 - re-exported: callers import redaction from here
    REDACTED,
    is_secret_key,
    mask_secret_values,
    redact,
    redact_argv,
    redact_mapping,
    redact_text,
    redact_value,
)


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return vars(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # 0-d tensors / numpy scalars
    return value


def _scalar(value: Any) -> Any:
    """A tracker-friendly scalar: numbers, bools, strings and None stay; everything else becomes a string."""
    value = _plain(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: _scalar(v), separators=(",", ":"), sort_keys=False)


def flatten(params: Mapping | Namespace | None, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings to ``{"a.b.c": value}``.

    Lists and tuples holding mappings or lists are flattened by index (``transforms.0.type``);
    lists of scalars stay one value (a compact JSON string), so ``betas: [0.9, 0.999]`` is one
    parameter. Empty mappings become ``"{}"``. Keys are kept full length (trackers with key limits
    deal with that themselves).
    """
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        value = _plain(value)
        if isinstance(value, Mapping):
            if not value and key:
                out[key] = "{}"
            for k, v in value.items():
                walk(v, f"{key}{sep}{k}" if key else str(k))
        elif isinstance(value, (list, tuple)) and any(isinstance(_plain(v), (Mapping, list, tuple)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}{sep}{i}" if key else str(i))
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
            out[key] = _json([_scalar(v) for v in items])
        else:
            out[key] = _scalar(value)

    if params is not None:
        walk(params, prefix)
    return out


def prepare_params(params: Mapping | Namespace | None, prefix: str = "") -> dict[str, Any]:
    """:func:`flatten` with secrets masked, then :func:`redact_value` on everything else.

    A secret key's text, bytes or container becomes one ``***`` value (``auth: ("u", "p")`` -> ``auth: ***``).
    Params that arrive flattened already (``auth.user``, ``auth.pin``) are masked when any component above the
    leaf is secret, numbers included; a secret leaf masks text only (``model.token: 5`` is a count, not a token).
    """
    flat = flatten(None if params is None else mask_secret_values(params), prefix)
    out = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        if any(is_secret_key(p) for p in parents):
            secret = value is not None and value != ""
        else:
            secret = is_secret_key(leaf) and isinstance(value, (str, bytes)) and bool(value)
        out[key] = REDACTED if secret else redact_value(value)
    return out


#: Fields of ``Module.optimizer_summary()`` rows, in table order.
SUMMARY_FIELDS = (
    "index",
    "name",
    "class",
    "lr",
    "initial_lr",
    "weight_decay",
    "modules",
    "matched_modules",
    "num_params",
    "frequency",
    "scheduler",
    "interval",
    "monitor",
    "gradient_clip_val",
    "gradient_clip_algorithm",
)


def summary_rows(summary: list[Mapping]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (scalars only; lists as JSON) of an optimizer summary, for tables."""
    columns = [f for f in SUMMARY_FIELDS if any(f in row for row in summary)]
    columns += sorted({k for row in summary for k in row} - set(columns))
    rows = []
    for row in summary:
        cells = []
        for col in columns:
            value = _plain(row.get(col))
            value = getattr(value, "value", value)  # str-valued enums
            cells.append(_json(value) if isinstance(value, (list, tuple, dict)) else _scalar(value))
        rows.append(cells)
    return columns, rows


def summary_params(summary: list[Mapping]) -> dict[str, Any]:
    """``optim/<name>/<field>`` parameters for every optimizer of a summary (``name`` not repeated)."""
    columns, rows = summary_rows(summary)
    out = {}
    for row in rows:
        values = dict(zip(columns, row))
        name = values.get("name")
        for col, value in values.items():
            if col != "name":
                out[f"optim/{name}/{col}"] = redact_value(value)
    return out
