"""Static PNG copies of the report's charts, drawn with matplotlib (for slides, issues, e-mail).

They show the same series as the interactive Plotly charts of the HTML page; the page links
each chart to its PNG.
"""

from __future__ import annotations

from pathlib import Path

from sptrack.dashboard import figures, layout
from sptrack.dashboard.collect import ReportData


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curve_png(data: ReportData, key: str, path: Path) -> Path:
    """``key`` against the step, one line per run."""
    plt, fig, ax = _figure(key)
    colors = figures.run_colors(data.runs)
    for run in data.runs:
        series = data.histories.get(key, {}).get(run.run_id)
        if series:
            ax.plot(series["step"], series["value"], marker="o" if len(series["step"]) <= 40 else None, markersize=3,
                    color=colors[run.run_id], label=run.label)
    ax.set_xlabel("step (global_step)")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def objective_png(data: ReportData, param: str, path: Path) -> Path:
    """The objective against one swept parameter."""
    assert data.study is not None
    plt, fig, ax = _figure(f"objective vs {param}")
    runs = [r for r in figures.objective_points(data) if param in r.params]
    xs = [r.params[param] for r in runs]
    ax.scatter([str(x) if isinstance(x, str) else x for x in xs], [r.final[data.study.objective] for r in runs],
               c=[figures.run_colors(data.runs)[r.run_id] for r in runs], edgecolors="#333")
    if figures.log_scale(xs):
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(data.study.objective)
    return _save(plt, fig, path)


def parallel_png(data: ReportData, path: Path) -> Path | None:
    """Parallel coordinates: each axis scaled to [0, 1] (log10 first for wide positive ranges)."""
    assert data.study is not None
    runs = [r for r in figures.objective_points(data) if all(p in r.params for p in data.study.params)]
    if not runs:
        return None
    axes = [figures._dimension(p, [r.params[p] for r in runs]) for p in data.study.params]
    axes.append({"label": data.study.objective, "values": [r.final[data.study.objective] for r in runs]})
    plt, fig, ax = _figure("parallel coordinates")
    scaled = []
    for a in axes:
        lo, hi = min(a["values"]), max(a["values"])
        scaled.append([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in a["values"]])
    objective = axes[-1]["values"]
    lo, hi = min(objective), max(objective)
    cmap = plt.get_cmap("viridis")
    for i in range(len(runs)):
        shade = (objective[i] - lo) / (hi - lo) if hi > lo else 0.5
        ax.plot(range(len(axes)), [s[i] for s in scaled], color=cmap(shade), marker="o", markersize=3)
    ax.set_xticks(range(len(axes)), [a["label"] for a in axes], rotation=20, fontsize=7, ha="right")
    ax.set_yticks([])
    return _save(plt, fig, path)


def write_pngs(data: ReportData, folder: Path) -> dict[str, Path]:
    """Every chart of the report as ``<folder>/<slug>.png``; returns chart id -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for key in data.histories:
        out[key] = curve_png(data, key, folder / f"{layout.slug(key)}.png")
    if data.study is not None:
        for param in data.study.params:
            out[f"objective:{param}"] = objective_png(data, param, folder / f"objective-{layout.slug(param)}.png")
        parallel = parallel_png(data, folder / "parallel-coordinates.png")
        if parallel is not None:
            out["parallel-coordinates"] = parallel
    return out
