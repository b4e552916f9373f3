"""The end-of-sweep report: best trials, parameter importances, and how to open optuna-dashboard."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from sptrack.tune.options import heldout_name

TOP = 5


def state_counts(study: Any) -> dict[str, int]:
    """``{"COMPLETE": n, "PRUNED": n, "FAIL": n, ...}`` over the study's trials."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_trials(study: Any, top: int = TOP) -> list:
    """The ``top`` COMPLETE trials, best first."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None and math.isfinite(t.value)]
    maximize = study.direction.name == "MAXIMIZE"
    return sorted(done, key=lambda t: t.value, reverse=maximize)[:top]


def importances(study: Any) -> tuple[Optional[dict[str, float]], str]:
    """Parameter importances, or None and the reason they are not available."""
    import optuna

    complete = best_trials(study, top=10**9)
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 complete trials (this study has {len(complete)})."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study), ""
    except (ValueError, RuntimeError) as err:  # e.g. every trial sampled the same values
        return None, f"parameter importances are not available: {err}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_line(best: Any, objective: str) -> str:
    """The best trial's validation value and, apart, its held-out value (never seen by the sampler or pruner)."""
    line = f"best trial {best.number}: {objective} {_fmt(best.value)} on the validation images"
    heldout = best.user_attrs.get("heldout_value")
    if heldout is None:
        return line + " (no held-out value: the trials evaluated on the held-out split)."
    return line + f"; held-out {heldout_name(objective)} {_fmt(float(heldout))} (scored after training, not used to choose)."


def print_report(study: Any, spec: Any, console: Any = None) -> None:
    """Print the best trials (value, params, run id), the importances and the dashboard command."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    counts = state_counts(study)
    shown = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    objective = study.user_attrs.get("objective", "value")
    top = best_trials(study)
    keys = sorted({k for t in top for k in t.params})
    table = Table(title=f"sptrack sweep {study.study_name}: best trials ({shown})")
    for column in ("trial", objective, *keys, "run id"):
        table.add_column(column)
    for t in top:
        table.add_row(str(t.number), _fmt(t.value), *(_fmt(t.params.get(k, "-")) for k in keys), str(t.user_attrs.get("run_id", "-")))
    console.print(table)
    if not top:
        console.print("no trial has completed yet.")
    else:
        console.print(best_line(top[0], objective), soft_wrap=True)
    values, reason = importances(study)
    if values is None:
        console.print(reason)
    else:
        imp = Table(title="parameter importances")
        imp.add_column("parameter")
        imp.add_column("importance")
        for key, value in values.items():
            imp.add_row(key, f"{value:.3f}")
        console.print(imp)
    console.print(f"open the study in optuna-dashboard: {spec.dashboard_command}", soft_wrap=True)
