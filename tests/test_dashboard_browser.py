"""Headless Chromium on the report file and on the real MLflow UI: screenshots, and the rendered DOM after JavaScript ran.

Skipped, with the reason printed, only where no Chromium is installed (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from dashboard_helpers.sweep import OPTIMIZERS, free_port, make_sweep, wait_http
from sptrack.dashboard.browser import REPORT_READY, Browser, find_chromium
from sptrack.dashboard.report import build_report

if find_chromium() is None:
    reason = "no Chromium on this machine (apt-get install chromium; .ci/run does it): browser tests skipped"
    print(reason, file=sys.stderr)
    pytest.skip(reason, allow_module_level=True)


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and check the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.getbasetemp())


def test_report_renders_every_run_and_lr_chart_in_chromium(sweep, tmp_path):
    html = build_report(sweep.mlflow_uri, tmp_path, study=sweep.study, pngs=False)
    client = MlflowClient(sweep.mlflow_uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name(sweep.experiment).experiment_id]) if r.data.tags.get("sptrack.role") != "study"]
    run_ids = {r.info.run_id for r in runs}
    with Browser(width=1400, height=1000) as browser:
        browser.open(str(html), ready=REPORT_READY, timeout=90)
        shot = browser.screenshot(tmp_path / "report.png")
        assert set(browser.evaluate("[...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.runId)")) == run_ids
        for name in OPTIMIZERS:
            key = f"hparams/lr_{name}"
            drawn = browser.evaluate(f"""(() => {{
                const gd = document.querySelector('figure[data-metric="{key}"] .js-plotly-plot');
                return {{title: gd.querySelector('.gtitle').textContent, lines: gd.querySelectorAll('g.trace.scatter path.js-line').length,
                         traces: gd.data.map(t => ({{run: t.meta, x: Array.from(t.x), y: Array.from(t.y)}}))}};
            }})()""")
            assert drawn["title"] == key and drawn["lines"] == len(run_ids)  # one drawn line per run
            assert {t["run"] for t in drawn["traces"]} == run_ids
            for trace in drawn["traces"]:  # what the chart holds is MLflow's history
                history = client.get_metric_history(trace["run"], key)
                assert trace["x"] == [m.step for m in history] and trace["y"] == [m.value for m in history]
        assert browser.evaluate("document.querySelector('[data-chart=\"parallel-coordinates\"] .js-plotly-plot').data[0].type") == "parcoords"
        # offline: the page fetched nothing over the network
        assert browser.evaluate("performance.getEntriesByType('resource').filter(e => /^https?:/.test(e.name)).length") == 0
    assert png_size(shot) == (1400, 1000) and shot.stat().st_size > 30_000


def test_mlflow_ui_shows_the_runs_and_lr_charts(sweep, tmp_path):
    port, log = free_port(), tmp_path / "mlflow-ui.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as out:  # the launcher execs mlflow: its PID is the server's, its group holds uvicorn
        proc = subprocess.Popen([sys.executable, "-m", "sptrack.dashboard", "mlflow-ui", "--backend-store-uri", sweep.mlflow_uri,
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=sweep.folder)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        assert f"mlflow ui at {url}" in log.read_text()
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(sweep.experiment)
        names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sptrack.role") != "study")
        assert len(names) == sweep.trials
        with Browser(width=1600, height=1100) as browser:
            browser.open(f"{url}/#/experiments/{exp.experiment_id}/runs", ready=f"document.body.innerText.includes('study {sweep.study}')", timeout=120)
            # trials are child runs of the study's run: expand it
            browser.evaluate(f"[...document.querySelectorAll('.ag-row')].find(r => r.innerText.includes('study {sweep.study}')).querySelector('button').click()")
            browser.wait_for(" && ".join(f"document.body.innerText.includes('{n}')" for n in names), timeout=60)
            browser.screenshot(tmp_path / "mlflow-runs.png")
            charts = " && ".join(f"document.body.innerText.includes('{n} (hparams/lr_{o})')" for n in names for o in OPTIMIZERS)
            browser.open(f"{url}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART", ready=charts, timeout=120)
            titles = browser.evaluate("document.body.innerText")
            shot = browser.screenshot(tmp_path / "mlflow-charts.png")
        for name in OPTIMIZERS:
            assert f"hparams/lr_{name}" in titles
        assert png_size(shot) == (1600, 1100) and shot.stat().st_size > 30_000
        assert (tmp_path / "mlflow-runs.png").stat().st_size > 20_000
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
