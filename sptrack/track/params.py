"""Hyper-parameters for trackers: flattening with dotted keys and secret redaction.

Everything a tracker receives goes through :func:`prepare_params` (dicts) or :func:`redact_text`
(files such as the recipe), so API keys, tokens and passwords never reach MLflow or W&B.
"""

from __future__ import annotations

import json
import math
import re
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, Iterable

REDACTED = "***"

#: A key is secret when its last dotted component is one of these words, alone or as a
#: ``_``/``-`` separated suffix (``api_key``, ``WANDB_API_KEY``, ``hf_token``, ``db-password``),
#: and its value is a non-empty string. ``num_tokens``/``max_tokens``/``tokenizer`` are not secret.
_SECRET_WORDS = (
    r"api[_-]?key|apikey|access[_-]?key|secret[_-]?key|secret|client[_-]?secret|password|passwd|pwd|passphrase"
    r"|token|access[_-]?token|auth[_-]?token|refresh[_-]?token|bearer|credentials?|private[_-]?key"
)
_SECRET_KEY = re.compile(rf"(?:^|[_\-])(?:{_SECRET_WORDS})$", re.IGNORECASE)
#: ``scheme://user:password@host`` -> ``scheme://user:***@host``.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^\s/@:]*):(?P<password>[^\s/@]+)@")
#: ``?token=...`` / ``&api_key=...`` / ``&sig=...`` query parameters.
_URL_QUERY_SECRET = re.compile(
    rf"(?P<prefix>[?&](?:{_SECRET_WORDS}|key|sig|signature|x-amz-signature|x-amz-credential)=)[^&#\s]+",
    re.IGNORECASE,
)
#: ``Authorization: Bearer xyz`` style values.
_BEARER = re.compile(r"(?P<prefix>\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=\-]{12,}", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether a (possibly dotted) parameter name names a credential."""
    last = re.split(r"[./]", str(key))[-1]
    return bool(_SECRET_KEY.search(last))


def redact_value(value: Any) -> Any:
    """Mask credentials inside a string value (URL passwords, secret query parameters, bearer tokens)."""
    if not isinstance(value, str):
        return value
    value = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    value = _URL_QUERY_SECRET.sub(lambda m: f"{m['prefix']}{REDACTED}", value)
    return _BEARER.sub(lambda m: f"{m['prefix']}{REDACTED}", value)


def redact(key: str, value: Any) -> Any:
    """The value to log for ``key``: :data:`REDACTED` for secrets, else :func:`redact_value`."""
    if is_secret_key(key) and isinstance(value, (str, bytes)) and value:
        return REDACTED
    return redact_value(value)


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
    """:func:`flatten`, then :func:`redact` every value (secret keys anywhere in the path included)."""
    flat = flatten(params, prefix)
    out = {}
    for key, value in flat.items():
        secret = any(is_secret_key(part) for part in key.split("."))
        out[key] = REDACTED if secret and isinstance(value, str) and value else redact_value(value)
    return out


def redact_mapping(params: Any) -> Any:
    """A deep copy of a nested config with secrets masked (for the resolved-config artifact)."""
    params = _plain(params)
    if isinstance(params, Mapping):
        return {str(k): (REDACTED if is_secret_key(str(k)) and isinstance(v, str) and v else redact_mapping(v)) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [redact_mapping(v) for v in params]
    if isinstance(params, (str, int, float, bool)) or params is None:
        return redact_value(params)
    return redact_value(_scalar(params))


#: ``key: value`` (YAML), ``key = value`` (TOML/INI), ``"key": value`` (JSON) on one line.
_ASSIGNMENT = re.compile(
    r"""^(?P<head>\s*-?\s*["']?(?P<key>[A-Za-z0-9_.\-]+)["']?\s*[:=]\s*)(?P<value>[^\s#,{}\[\]][^#]*?|["'][^"']*["'])(?P<tail>\s*,?\s*(?:\#.*)?)$"""
)


def redact_text(text: str) -> str:
    """Mask credentials in a recipe/config file while keeping its layout and comments."""
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        match = _ASSIGNMENT.match(body)
        if match and is_secret_key(match["key"]) and match["value"].strip("\"' "):
            quote = match["value"][0] if match["value"][:1] in "\"'" else ""
            body = f"{match['head']}{quote}{REDACTED}{quote}{match['tail']}"
        lines.append(redact_value(body) + end)
    return "".join(lines)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Command-line arguments with ``--api-key X`` / ``--token=X`` values and URL passwords masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-"):
            name, eq, _ = arg.lstrip("-").partition("=")
            if is_secret_key(name.replace("-", "_")):
                if eq:
                    out.append(arg.split("=", 1)[0] + "=" + REDACTED)
                else:
                    out.append(arg)
                    hide_next = True
                continue
        elif "=" in arg:  # key=value overrides
            name, _, value = arg.partition("=")
            if any(is_secret_key(p) for p in name.split(".")) and value:
                out.append(f"{name}={REDACTED}")
                continue
        out.append(redact_value(arg))
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
