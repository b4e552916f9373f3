"""Plotly figures of a :class:`~sptrack.dashboard.collect.ReportData`: curves, objective scatter, parallel coordinates.

Every trace carries its run id in ``meta`` so that a test (or a user in the browser console) can
map what is drawn back to MLflow: ``document.getElementById(div).data[i].meta``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from sptrack.dashboard import layout
from sptrack.dashboard.collect import ReportData, RunSummary

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
HEIGHT = 340


def run_colors(runs: list[RunSummary]) -> dict[str, str]:
    """One color per run, the same in every chart."""
    return {r.run_id: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}


def _layout(title: str, x_title: str, y_title: str) -> dict[str, Any]:
    return dict(title=dict(text=title, x=0.02, font=dict(size=15)), height=HEIGHT, template="plotly_white",
                margin=dict(l=60, r=20, t=45, b=45), xaxis=dict(title=dict(text=x_title)), yaxis=dict(title=dict(text=y_title)),
                legend=dict(font=dict(size=10)), hovermode="closest")


def curve_figure(data: ReportData, key: str):
    """``key`` against the step (``global_step``), one line per run that logged it."""
    import plotly.graph_objects as go

    colors = run_colors(data.runs)
    fig = go.Figure()
    for run in data.runs:
        series = data.histories.get(key, {}).get(run.run_id)
        if not series:
            continue
        mode = "lines+markers" if len(series["step"]) <= 40 else "lines"
        fig.add_trace(go.Scatter(x=series["step"], y=series["value"], mode=mode, name=run.label, meta=run.run_id,
                                 line=dict(color=colors[run.run_id], width=2), marker=dict(size=5)))
    fig.update_layout(**_layout(key, "step (global_step)", key.split("/")[-1]))
    values = [v for series in data.histories.get(key, {}).values() for v in series["value"]]
    # Swept lrs span decades: compare them on a log axis (also for one constant lr, which a linear
    # axis would centre in a +-1 range, drawing 1e-3 on the zero line).
    if key.startswith(layout.LR_PREFIX) and values and min(values) > 0:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def log_scale(values: list[Any]) -> bool:
    """A numeric parameter spanning more than a factor 20 on positive values reads better on a log axis."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(nums) and len(nums) == len(values) and min(nums) > 0 and max(nums) / min(nums) > 20


def objective_points(data: ReportData) -> list[RunSummary]:
    """The trials with a finite objective (COMPLETE trials: PRUNED and FAIL ones log none)."""
    objective = data.study.objective if data.study else ""
    return [r for r in data.runs if isinstance(r.final.get(objective), float) and math.isfinite(r.final[objective])]


def objective_figure(data: ReportData, param: str):
    """The objective against one swept parameter, one point per complete trial."""
    import plotly.graph_objects as go

    assert data.study is not None
    colors = run_colors(data.runs)
    runs = [r for r in objective_points(data) if param in r.params]
    xs = [r.params[param] for r in runs]
    fig = go.Figure(go.Scatter(
        x=xs, y=[r.final[data.study.objective] for r in runs], mode="markers+text", meta=[r.run_id for r in runs],
        text=[f"#{r.trial_number}" if r.trial_number is not None else r.name for r in runs], textposition="top center",
        marker=dict(size=11, color=[colors[r.run_id] for r in runs], line=dict(width=1, color="#333")), showlegend=False,
    ))
    fig.update_layout(**_layout(f"objective vs {param}", param, data.study.objective))
    if log_scale(xs):
        fig.update_xaxes(type="log")
    return fig


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    """A parallel-coordinates axis: log10 for wide positive ranges, indices for categories."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if log_scale(values):
            return dict(label=f"log10 {label}", values=[math.log10(v) for v in values])
        return dict(label=label, values=[float(v) for v in values])
    cats = sorted({repr(v) for v in values})
    return dict(label=label, values=[cats.index(repr(v)) for v in values], tickvals=list(range(len(cats))), ticktext=cats)


def parallel_figure(data: ReportData) -> Optional[Any]:
    """Every swept parameter and the objective, one line per complete trial (None without such trials)."""
    import plotly.graph_objects as go

    assert data.study is not None
    runs = [r for r in objective_points(data) if all(p in r.params for p in data.study.params)]
    if not runs:
        return None
    objective = [r.final[data.study.objective] for r in runs]
    dims = [_dimension(p, [r.params[p] for r in runs]) for p in data.study.params]
    dims.append(dict(label=data.study.objective, values=objective))
    fig = go.Figure(go.Parcoords(dimensions=dims, meta=[r.run_id for r in runs],
                                 line=dict(color=objective, colorscale="Viridis", showscale=True)))
    layout = _layout("parallel coordinates: swept parameters and objective", "", "")
    layout["margin"] = dict(l=80, r=60, t=80, b=30)
    layout["height"] = 420
    fig.update_layout(**layout)
    return fig
