"""What the dashboards show: one declaration shared by the HTML report and the W&B workspace.

The metric names are the ones :mod:`sptrack.track` and :mod:`sptrack.tune` log:
``hparams/lr_<optimizer>`` (one chart per named optimizer, on the ``global_step`` axis),
``train/*`` losses, ``eval/*`` held-out metrics (online probe, kNN, RankMe) and the trial's
``optuna/objective``. Keeping the list here means a metric added to the trackers is added to
both dashboards in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

LR_PREFIX = "hparams/lr_"
OBJECTIVE = "optuna/objective"
#: Probe metrics first, in this order, then any other ``eval/*`` metric alphabetically.
EVAL_ORDER = ("eval/probe_acc", "eval/knn_acc", "eval/rankme")
#: Run tags written by :mod:`sptrack.tune.tracking` (repeated here: tune must not import dashboard,
#: and importing tune's Lightning-heavy module just for four strings would slow the CLI down).
TAG_STUDY = "sptrack.study"
TAG_TRIAL = "sptrack.trial_number"
TAG_STATE = "sptrack.trial_state"
TAG_PARAM = "sptrack.param."
TAG_ROLE = "sptrack.role"
#: Per-optimizer settings shown in the run table, read from the ``optim.<name>.<field>`` params.
OPTIMIZER_FIELDS = ("class", "lr", "weight_decay", "frequency", "scheduler", "interval", "gradient_clip_val", "num_params")


@dataclass(frozen=True)
class Section:
    """A group of charts: ``title`` and the metric keys, one chart per key (runs overlaid)."""

    title: str
    keys: tuple[str, ...]


def lr_keys(keys: Iterable[str]) -> list[str]:
    """The ``hparams/lr_<name>`` keys among ``keys``, sorted by optimizer name."""
    return sorted(k for k in set(keys) if k.startswith(LR_PREFIX))


def optimizer_name(lr_key: str) -> str:
    """``hparams/lr_backbone`` -> ``backbone``."""
    return lr_key[len(LR_PREFIX):]


def loss_keys(keys: Iterable[str]) -> list[str]:
    """Training losses: ``train/*`` metrics whose name contains ``loss``."""
    return sorted(k for k in set(keys) if k.startswith("train/") and "loss" in k)


def eval_keys(keys: Iterable[str]) -> list[str]:
    """Held-out metrics: the probes first (:data:`EVAL_ORDER`), then the other ``eval/*`` keys."""
    keys = set(keys)
    ordered = [k for k in EVAL_ORDER if k in keys]
    return ordered + sorted(k for k in keys if k.startswith("eval/") and k not in EVAL_ORDER)


def sections(keys: Iterable[str]) -> list[Section]:
    """The chart sections for runs that logged ``keys`` (empty sections are left out)."""
    keys = set(keys)
    candidates = [
        Section("Learning rate per optimizer", tuple(lr_keys(keys))),
        Section("Training loss", tuple(loss_keys(keys))),
        Section("Probe, kNN and RankMe (held-out)", tuple(eval_keys(keys))),
    ]
    return [s for s in candidates if s.keys]


def slug(text: str) -> str:
    """An HTML-id-safe version of a metric key (``hparams/lr_head`` -> ``hparams-lr_head``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")
