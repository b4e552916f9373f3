"""``python -m sptrack.dashboard {report,wandb,mlflow-ui,optuna,screenshot}``: the dashboards' command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from sptrack.errors import ConfigError
from sptrack.track.params import redact_value


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sptrack.dashboard", description="Compare sptrack runs and sweeps in MLflow and W&B.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="self-contained HTML comparison page (plus PNGs) from an MLflow store")
    r.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow store: sqlite:///mlflow.db, http://127.0.0.1:5000, ... (default: $MLFLOW_TRACKING_URI)")
    r.add_argument("--experiment", type=_csv, default=[], help="experiment name(s), comma-separated: all their runs")
    r.add_argument("--study", help="sweep study name: its trial runs, objective vs each parameter, parallel coordinates")
    r.add_argument("--runs", type=_csv, default=None, help="only these run ids (full or unique prefixes), comma-separated")
    r.add_argument("--out", required=True, help="output folder: report.html and png/")
    r.add_argument("--no-png", action="store_true", help="skip the matplotlib PNGs")

    w = sub.add_parser("wandb", help="W&B workspace: write and validate its spec; --apply saves it to W&B")
    w.add_argument("--entity", required=True)
    w.add_argument("--project", required=True)
    w.add_argument("--study", help="filter the run set to this study (the runs' W&B group)")
    w.add_argument("--storage", help="the study's Optuna storage: swept parameters (and optimizer names) are read from it")
    w.add_argument("--optimizers", type=_csv, default=[], help="optimizer names: one hparams/lr_<name> panel each")
    w.add_argument("--params", type=_csv, default=[], help="swept parameter keys for the parallel-coordinates panel")
    w.add_argument("--objective", default="optuna/objective", help="metric for parameter importance (default: optuna/objective)")
    w.add_argument("--name", help="workspace name")
    w.add_argument("--out", required=True, help="where to write the spec (JSON)")
    w.add_argument("--apply", action="store_true", help="also save the workspace to W&B (needs credentials and the network)")

    m = sub.add_parser("mlflow-ui", help="mlflow ui on 127.0.0.1")
    m.add_argument("--backend-store-uri", required=True, help="e.g. sqlite:///runs/mlflow.db")
    m.add_argument("--port", type=int, default=5000, help="0: any free port")
    m.add_argument("--artifacts-destination", help="where the UI stores new artifacts (default: MLflow's)")

    o = sub.add_parser("optuna", help="optuna-dashboard on 127.0.0.1")
    o.add_argument("--storage", required=True, help="sqlite:///PATH, journal:PATH or a database URL (as for --sweep)")
    o.add_argument("--port", type=int, default=8080, help="0: any free port")
    o.add_argument("--study", help="print the URL of this study's page")

    s = sub.add_parser("screenshot", help="PNG of a report file or a URL, taken with headless Chromium")
    s.add_argument("target", help="report.html or a URL")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--width", type=int, default=1400)
    s.add_argument("--height", type=int, default=1000)
    s.add_argument("--full-page", action="store_true")
    s.add_argument("--wait-for", help="JavaScript expression to wait for (default: every chart drawn for a report)")
    return p


def _study_params(storage: str, study: Optional[str]) -> list[str]:
    import optuna

    from sptrack.dashboard.launchers import open_study_storage
    from sptrack.errors import suggestion

    store = open_study_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study not in names:
        raise ConfigError("--study", f"no study {study!r} in {redact_value(storage)}.", suggestion(str(study), names) or f" Studies there: {', '.join(names) or 'none'}.")
    trials = optuna.load_study(study_name=study, storage=store).get_trials(deepcopy=False)
    return sorted({k for t in trials for k in t.params})


def _wandb(args: argparse.Namespace) -> int:
    from sptrack.dashboard.wandb_workspace import panel_metrics, save_online, workspace_spec, write_spec

    params = list(args.params)
    if args.storage:
        if not args.study:
            raise ConfigError("--study", "is needed with --storage.", "Name the study whose parameters to plot.")
        params = params or _study_params(args.storage, args.study)
    optimizers = list(args.optimizers) or sorted({k.split(".")[1] for k in params if k.startswith("optim.") and k.count(".") >= 2})
    workspace = workspace_spec(args.entity, args.project, study=args.study, optimizers=optimizers, params=params,
                               objective=args.objective, name=args.name)
    spec = write_spec(workspace, args.out)
    for section, keys in panel_metrics(spec).items():
        print(f"{section}: {', '.join(keys)}")
    print(f"W&B workspace spec written to {args.out} (validated offline)")
    if args.apply:
        print(f"saved: {save_online(workspace)}")
    return 0


#: What each sub-command needs from the ``[dashboard]`` extra (pyproject.toml), by import name.
NEEDS = {"report": ("plotly",), "wandb": ("wandb_workspaces",), "optuna": ("optuna_dashboard",), "screenshot": ("websocket",)}


def require_extra(command: str) -> None:
    """Raise a ConfigError naming ``pip install 'sptrack[dashboard]'`` when a package ``command`` needs is missing."""
    import importlib

    for name in NEEDS.get(command, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(command, f"needs the package {name!r}, which is not installed.",
                              "Install the dashboard extra: pip install 'sptrack[dashboard]'.") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one sub-command; a bad option is one line on stderr and exit code 2."""
    args = _parser().parse_args(argv)
    try:
        require_extra(args.command)
        if args.command == "report":
            from sptrack.dashboard.report import build_report

            if not args.tracking_uri:
                raise ConfigError("--tracking-uri", "is not set.", "Give --tracking-uri sqlite:///mlflow.db (or set MLFLOW_TRACKING_URI).")
            if not args.experiment and not args.study:
                raise ConfigError("--experiment", "no runs selected.", "Give --experiment NAME or --study NAME.")
            path = build_report(args.tracking_uri, args.out, experiments=args.experiment, study=args.study, run_ids=args.runs,
                                pngs=not args.no_png)
            print(f"report: {path}")
            return 0
        if args.command == "wandb":
            return _wandb(args)
        if args.command == "mlflow-ui":
            from sptrack.dashboard.launchers import run_mlflow_ui

            run_mlflow_ui(args.backend_store_uri, args.port, args.artifacts_destination)
        if args.command == "optuna":
            from sptrack.dashboard.launchers import run_optuna_dashboard

            run_optuna_dashboard(args.storage, args.port, args.study)
            return 0
        if args.command == "screenshot":
            from sptrack.dashboard.browser import screenshot

            print(f"screenshot: {screenshot(args.target, args.out, args.width, args.height, args.wait_for, args.full_page)}")
            return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
