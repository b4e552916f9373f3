"""The W&B workspace as code, built with ``wandb-workspaces``: saved online, written and validated offline.

Sections (same choice of metrics as the HTML report, :mod:`sptrack.dashboard.layout`):

* *Learning rates*: one line plot per ``hparams/lr_<optimizer>`` (or, when the optimizer names
  are not given, one plot of every key matching ``hparams/lr_.*``), on ``trainer/global_step``;
* *Probes and loss*: ``eval/probe_acc``, ``eval/knn_acc``, ``eval/rankme`` and ``train/loss``;
* *Study*: a parallel-coordinates plot of the swept parameters and the objective, and the
  parameter importance with respect to the objective (``optuna/objective``).

The run set is grouped by the run's W&B ``group`` (= the study, see :mod:`sptrack.tune.tracking`)
and, with ``--study``, filtered to that group. Sweep parameters live in the run config under their
dotted key (``optim.backbone.lr``), stored flat, so the config accessor is ``<key>.value``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from sptrack.dashboard import layout
from sptrack.errors import ConfigError

STEP_KEY = "trainer/global_step"  # the x axis sptrack's W&B tracker defines for every metric
PROBE_KEYS = ("eval/probe_acc", "eval/knn_acc", "eval/rankme", "train/loss")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_name(option: str, value: str) -> None:
    if not value or not _NAME.match(value):
        raise ConfigError(option, f"{value!r} is not a valid name.", "Use letters, digits, '_', '-' and '.'.")


def _flat_config_column(key: str):
    """A parallel-coordinates axis on the flat config key ``key`` (accessor ``config:<key>.value``).

    ``wr.Config("optim.backbone.lr")`` assumes a nested config and writes
    ``config:optim.value.backbone.lr``; sptrack's tracker logs flat dotted keys, whose value sits at
    the end of the path (see ``wandb_workspaces.expr.groupby_str_to_key``).
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2 import internal

    column = wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key), display_name=key, log=key.endswith("lr") or None)
    accessor = f"config:{key}.value"
    object.__setattr__(column, "_to_model", lambda: internal.Column(accessor=accessor, display_name=key, log=column.log))
    return column


def workspace_spec(entity: str, project: str, study: Optional[str] = None, optimizers: Sequence[str] = (),
                   params: Sequence[str] = (), objective: str = layout.OBJECTIVE, name: Optional[str] = None):
    """The ``wandb_workspaces.workspaces.Workspace`` (not saved; no network needed to build it)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    _check_name("--entity", entity)
    _check_name("--project", project)
    for opt in optimizers:
        _check_name("--optimizers", opt)
    lr_panels = ([wr.LinePlot(title=f"{layout.LR_PREFIX}{o}", x=STEP_KEY, y=[f"{layout.LR_PREFIX}{o}"]) for o in optimizers]
                 or [wr.LinePlot(title="hparams/lr_* (every optimizer)", x=STEP_KEY, metric_regex=r"hparams/lr_.*")])
    probe_panels = [wr.LinePlot(title=key, x=STEP_KEY, y=[key]) for key in PROBE_KEYS]
    columns = [_flat_config_column(p) for p in params]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=objective, display_name=objective))
    study_panels = [wr.ParallelCoordinatesPlot(title="swept parameters and objective", columns=columns),
                    wr.ParameterImportancePlot(with_respect_to=objective)]
    runset = ws.RunsetSettings(groupby=[ws.Metric("Group")], filters=f"Metric('Group') == {study!r}" if study else "")
    return ws.Workspace(
        entity=entity, project=project, name=name or (f"sptrack study {study}" if study else "sptrack runs"),
        sections=[ws.Section(name="Learning rates", panels=lr_panels, is_open=True),
                  ws.Section(name="Probes and loss", panels=probe_panels, is_open=True),
                  ws.Section(name="Study", panels=study_panels, is_open=True)],
        settings=ws.WorkspaceSettings(x_axis=STEP_KEY), runset_settings=runset,
    )


def to_spec(workspace: Any) -> dict[str, Any]:
    """The workspace as the JSON view spec W&B stores (``wandb-workspaces``' own serialization)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


def panel_metrics(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Section name -> the metric keys (line plots), regexes, columns and importance targets it shows."""
    out: dict[str, list[str]] = {}
    for section in spec["spec"]["section"]["panelBankConfig"]["sections"]:
        keys = out.setdefault(section["name"], [])
        for panel in section["panels"]:
            cfg = panel.get("config", {})
            keys += cfg.get("metrics", [])
            keys += [cfg["metricRegex"]] if cfg.get("metricRegex") else []
            keys += [c["accessor"] for c in cfg.get("columns", [])]
            keys += [cfg["targetKey"]] if cfg.get("targetKey") else []
    return out


def validate_spec(spec: dict[str, Any]) -> None:
    """Round-trip the spec through ``wandb-workspaces``' pydantic model (what ``save`` sends) and check the panels.

    Raises ``ValueError`` naming what is wrong.
    """
    from wandb_workspaces.workspaces import internal

    view = internal.View.model_validate(spec)  # schema check: the exact model upsert_view2 serializes
    again = json.loads(view.model_dump_json(by_alias=True, exclude_none=True))
    if again != spec:
        raise ValueError("the workspace spec does not survive a round trip through wandb-workspaces' View model.")
    metrics = panel_metrics(spec)
    for section in ("Learning rates", "Probes and loss", "Study"):
        if not metrics.get(section):
            raise ValueError(f"section {section!r} has no panel with a metric.")
    if not any(k.startswith(layout.LR_PREFIX) for k in metrics["Learning rates"]):
        raise ValueError("no hparams/lr_* panel.")


def write_spec(workspace: Any, path: str | Path) -> dict[str, Any]:
    """Validate the workspace's spec and write it as JSON; returns the spec."""
    spec = to_spec(workspace)
    validate_spec(spec)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return spec


def save_online(workspace: Any) -> str:
    """Save the workspace to W&B (needs credentials and the network); returns its URL."""
    return workspace.save().url
