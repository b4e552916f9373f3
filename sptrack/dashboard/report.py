"""The MLflow comparison report: one self-contained HTML page (Plotly inlined, no network) plus PNGs.

Layout of ``--out DIR``:

* ``report.html``: the run table with each run's per-optimizer settings, one chart per
  ``hparams/lr_<name>``, training loss and held-out metrics (runs overlaid), and for a study the
  objective against each swept parameter and a parallel-coordinates view. The data behind the
  charts is embedded as ``<script type="application/json" id="sptrack-data">`` (see
  :meth:`ReportData.to_json`), so tools and tests can read exactly what is plotted.
* ``png/<chart>.png``: the same charts drawn with matplotlib.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from sptrack.dashboard import figures, layout
from sptrack.dashboard.collect import ReportData, collect

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c7cbd6;font-size:13px}
main{padding:8px 24px 32px}h2{font-size:16px;margin:22px 0 8px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
figure.chart{background:#fff;border:1px solid #e1e4ea;border-radius:6px;margin:0;padding:4px}
figure.chart figcaption{font-size:11px;text-align:right;padding:0 8px 4px}
figure.wide{grid-column:1/-1}
table{border-collapse:collapse;background:#fff;font-size:12px;width:100%}
th,td{border:1px solid #e1e4ea;padding:4px 6px;text-align:left;white-space:nowrap}th{background:#eef0f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.scroll{overflow-x:auto}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _run_table(data: ReportData) -> str:
    """Runs, trial tags, sampled parameters, final metrics and each optimizer's settings."""
    colors = figures.run_colors(data.runs)
    optimizers = sorted({name for r in data.runs for name in r.optimizers})
    fields = [f for f in layout.OPTIMIZER_FIELDS if any(f in r.optimizers.get(o, {}) for r in data.runs for o in optimizers)]
    params = data.study.params if data.study else []
    metrics = [k for k in (data.study.objective if data.study else None, *layout.eval_keys(data.histories), *layout.loss_keys(data.histories))
               if k and any(k in r.final for r in data.runs)]
    head = ["run", "run id", "status", *(["trial", "state"] if data.study else []), *params, *metrics]
    head += [f"{o}: {f}" for o in optimizers for f in fields]
    rows = []
    for r in data.runs:
        cells = [f'<td><span class="swatch" style="background:{colors[r.run_id]}"></span>{html.escape(r.name)}</td>',
                 f'<td class="run-id"><code>{r.run_id}</code></td>', f"<td>{html.escape(r.status)}</td>"]
        if data.study:
            cells += [f'<td class="num">{_fmt(r.trial_number)}</td>', f"<td>{html.escape(_fmt(r.trial_state))}</td>"]
        cells += [f'<td class="num">{html.escape(_fmt(r.params.get(p)))}</td>' for p in params]
        cells += [f'<td class="num">{_fmt(r.final.get(m))}</td>' for m in metrics]
        cells += [f"<td>{html.escape(_fmt(r.optimizers.get(o, {}).get(f)))}</td>" for o in optimizers for f in fields]
        rows.append(f'<tr data-run-id="{r.run_id}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<div class="scroll"><table id="runs"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _chart(fig: Any, chart_id: str, attrs: str, png: Optional[str], wide: bool = False) -> str:
    import plotly.io as pio

    div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"chart-{layout.slug(chart_id)}",
                      config={"displaylogo": False, "responsive": True})
    caption = f'<figcaption><a href="{html.escape(png)}">PNG</a></figcaption>' if png else ""
    return f'<figure class="chart{" wide" if wide else ""}" {attrs}>{div}{caption}</figure>'


def render_html(data: ReportData, pngs: Optional[dict[str, Path]] = None, out_dir: Optional[Path] = None) -> str:
    """The report page as one string (Plotly's JavaScript inlined once)."""
    from plotly.offline import get_plotlyjs

    from sptrack.track.params import redact_value

    def png(chart: str) -> Optional[str]:
        path = (pngs or {}).get(chart)
        return None if path is None else (str(path.relative_to(out_dir)) if out_dir else str(path))

    parts = [f'<section id="runs-section"><h2>Runs ({len(data.runs)})</h2>{_run_table(data)}</section>']
    for section in layout.sections(data.histories):
        charts = "".join(_chart(figures.curve_figure(data, key), key, f'data-metric="{html.escape(key)}"', png(key)) for key in section.keys)
        parts.append(f'<section class="charts" id="section-{layout.slug(section.title)}"><h2>{html.escape(section.title)}</h2><div class="grid">{charts}</div></section>')
    if data.study is not None:
        charts = "".join(_chart(figures.objective_figure(data, p), f"objective-{p}", f'data-param="{html.escape(p)}"', png(f"objective:{p}"))
                         for p in data.study.params)
        parallel = figures.parallel_figure(data)
        if parallel is not None:
            charts += _chart(parallel, "parallel-coordinates", 'data-chart="parallel-coordinates"', png("parallel-coordinates"), wide=True)
        n = len(figures.objective_points(data))
        parts.append(f'<section class="charts" id="section-study"><h2>Study {html.escape(data.study.name)}: {html.escape(data.study.objective)} '
                     f'({html.escape(data.study.direction)}, {n} complete of {len(data.runs)} trials)</h2><div class="grid">{charts}</div></section>')
    # JSON.parse rejects NaN/Infinity (a diverged trial logs them): null instead; no "</script>" inside the block.
    payload = json.dumps(_finite(data.to_json()), allow_nan=False).replace("</", "<\\/")
    source = f"MLflow {html.escape(redact_value(data.tracking_uri))} · experiments: {html.escape(', '.join(data.experiments))}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>sptrack report: {html.escape(data.title)}</title><style>{STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f'<body><header><h1>sptrack · {html.escape(data.title)}</h1><p>{source}</p></header><main>{"".join(parts)}</main>'
        f'<script type="application/json" id="sptrack-data">{payload}</script></body></html>\n'
    )


def build_report(tracking_uri: str, out_dir: str | Path, experiments: Sequence[str] = (), study: Optional[str] = None,
                 run_ids: Optional[Sequence[str]] = None, pngs: bool = True) -> Path:
    """Collect the runs, write ``report.html`` (and ``png/*.png``) into ``out_dir``; returns the HTML path."""
    data = collect(tracking_uri, experiments=experiments, study=study, run_ids=run_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = None
    if pngs:
        from sptrack.dashboard.pngs import write_pngs

        images = write_pngs(data, out / "png")
    path = out / "report.html"
    path.write_text(render_html(data, images, out), encoding="utf-8")
    return path


def embedded_data(html_text: str) -> dict[str, Any]:
    """The ``sptrack-data`` block of a report page, parsed (for tools and tests)."""
    start_tag = '<script type="application/json" id="sptrack-data">'
    start = html_text.index(start_tag) + len(start_tag)
    return json.loads(html_text[start:html_text.index("</script>", start)])
