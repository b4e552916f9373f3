"""Hyper-parameters for trackers: flattening with dotted keys, secrets masked, optimizer summary rows.

Everything a tracker receives goes through :func:`prepare_params` (dicts) or :func:`redact_text`
(files such as the recipe), so API keys, tokens and passwords never reach MLflow or W&B. The
redaction itself lives in :mod:`sptrack.track.redact`; its public names are re-exported here.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

from sptrack.track.redact import (  # noqa: F401 - re-exported: callers import redaction from here
    REDACTED,
    is_secret_key,
    mask_secret_values,
    redact,
    redact_argv,
    redact_mapping,
    redact_value,
)
from sptrack.track.redact_files import redact_text  # noqa: F401 - re-exported
from sptrack.track.values import compact_json, plain, scalar


def flatten(params: Mapping | Namespace | None, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings to ``{"a.b.c": value}``.

    Lists and tuples holding mappings or lists are flattened by index (``transforms.0.type``);
    lists of scalars stay one value (a compact JSON string), so ``betas: [0.9, 0.999]`` is one
    parameter. Empty mappings become ``"{}"``. Keys are kept full length (trackers with key limits
    deal with that themselves).
    """
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        value = plain(value)
        if isinstance(value, Mapping):
            if not value and key:
                out[key] = "{}"
            for k, v in value.items():
                walk(v, f"{key}{sep}{k}" if key else str(k))
        elif isinstance(value, (list, tuple)) and any(isinstance(plain(v), (Mapping, list, tuple)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}{sep}{i}" if key else str(i))
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
            out[key] = compact_json([scalar(v) for v in items])
        else:
            out[key] = scalar(value)

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
            value = plain(row.get(col))
            value = getattr(value, "value", value)  # str-valued enums
            cells.append(compact_json(value) if isinstance(value, (list, tuple, dict)) else scalar(value))
        rows.append(cells)
    return columns, rows


#: The prefix of every per-optimizer parameter: ``optim.<name>.<field>``, the config's own dotted scheme.
OPTIM_PREFIX = "optim."
#: Summary fields a ``Module(optim=...)``-form config holds inside the optimizer's declaration
#: (``optim.<name>.optimizer.lr``) rather than at ``optim.<name>.<field>``.
OPTIMIZER_ARGUMENTS = ("lr", "weight_decay")


def optimizer_param(name: str, field: str) -> str:
    """The parameter key of optimizer ``name``'s ``field``: ``optim.<name>.<field>``."""
    return f"{OPTIM_PREFIX}{name}.{field}"


def config_keys_of(name: str, field: str) -> tuple[str, ...]:
    """The flattened config keys that may already hold optimizer ``name``'s ``field``.

    ``optim.<name>.<field>`` (the recipe form), ``optim.<name>.optimizer.<field>`` for the optimizer's
    own arguments (the ``Module(optim=...)`` form) and, for the single-optimizer form's ``default``
    optimizer, ``optim.<field>`` / ``optim.optimizer.<field>``.
    """
    keys = [optimizer_param(name, field)]
    if field in OPTIMIZER_ARGUMENTS:
        keys.append(optimizer_param(name, f"optimizer.{field}"))
    if name == "default":
        keys.append(f"{OPTIM_PREFIX}{field}")
        if field in OPTIMIZER_ARGUMENTS:
            keys.append(f"{OPTIM_PREFIX}optimizer.{field}")
    return tuple(keys)


def summary_params(summary: list[Mapping], config_keys: Iterable[str] = ()) -> dict[str, Any]:
    """``optim.<name>.<field>`` parameters for the summary fields the logged config does not hold already.

    ``config_keys`` are the flattened parameter keys logged from the config; a field one of them
    holds (:func:`config_keys_of`) is left out, so each value has one name: ``optim.backbone.lr``
    comes from the config, ``optim.backbone.class``, ``.num_params``, ``.matched_modules``... from
    the summary. The config's value wins even where the summary knows more (a clip value left None
    in the config and filled from the Trainer): the ``optim/summary`` table has every effective value.
    """
    config_keys = set(config_keys)
    columns, rows = summary_rows(summary)
    out = {}
    for row in rows:
        values = dict(zip(columns, row))
        name = values.get("name")
        for col, value in values.items():
            if col == "name" or any(key in config_keys for key in config_keys_of(name, col)):
                continue
            out[optimizer_param(name, col)] = redact_value(value)
    return out
