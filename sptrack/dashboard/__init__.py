"""Dashboards as code: compare runs and sweeps in MLflow and W&B.

* :func:`build_report` — a self-contained HTML comparison page (plus PNGs) from an MLflow store;
* :func:`workspace_spec` — the W&B workspace (panels for ``hparams/lr_*``, probe metrics, parallel
  coordinates and parameter importance per study), saved online or written and validated offline;
* launchers for ``mlflow ui`` and ``optuna-dashboard`` bound to 127.0.0.1;
* :mod:`sptrack.dashboard.browser` — screenshots and DOM checks with headless Chromium.

Command line: ``python -m sptrack.dashboard {report,wandb,mlflow-ui,optuna,screenshot} --help``.
The package imports :mod:`sptrack.track` and :mod:`sptrack.tune`, never the reverse.
"""

from __future__ import annotations

from sptrack.dashboard.report import build_report, embedded_data
from sptrack.dashboard.wandb_workspace import workspace_spec

__all__ = ["build_report", "embedded_data", "workspace_spec"]
