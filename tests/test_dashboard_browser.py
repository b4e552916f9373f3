"""Headless Chromium on the report file and on the real MLflow UI: screenshots, and the rendered DOM after JavaScript ran.

Skipped, with the reason printed, only where no Chromium is installed (``.ci/run`` installs Debian's);
with ``CI=true`` a missing Chromium fails the run instead.
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
    if os.environ.get("CI") == "true":  # in CI the only checks of what a person sees must not silently vanish
        pytest.fail(reason.replace("skipped", "cannot run in CI"), pytrace=False)
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


#: DINO in a few steps, every step logged (so the lr curves have points).
TINY_DINO = ["data.dataset=synthetic", "data.subset=96", "data.batch_size=32", "model.cnn_widths=(8, 16)", "model.embed_dim=32",
             "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16",
             "dino.n_local=2", "eval.baseline_inits=1", "trainer.log_every_n_steps=1", "--max-epochs", "1"]


def test_a_run_tracked_by_default_opens_in_the_mlflow_ui_as_model_training(tmp_path):
    """The main command tracks by default; the command it prints opens the run, and MLflow shows it as model
    training with a chart per optimizer's hparams/lr_<name>."""
    import shlex
    import shutil
    from pathlib import Path

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("SPTRACK_TRACKER", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "dino.py"
    done = subprocess.run([sys.executable, "-m", "sptrack.run", str(recipe), *TINY_DINO], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in done.stdout.splitlines()
             if line.strip().startswith(("tracked:", "open it:", "then:"))}
    assert lines["tracked"].endswith(f"in sqlite:///{tmp_path}/runs/mlflow.db"), lines
    command, run_url = shlex.split(lines["open it"]), lines["then"]
    assert command[0] == "mlflow" and "--port" in command
    command[0] = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    port = command[command.index("--port") + 1]
    log = tmp_path / "mlflow-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc, log)
        client = MlflowClient(base)
        (experiment,) = [e for e in client.search_experiments() if e.name == "dino"]
        assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
        runs_page = f"{base}/#/experiments/{experiment.experiment_id}/runs/"
        assert run_url.startswith(runs_page) and run_url.endswith("/model-metrics?workflowType=machine_learning"), run_url
        run_id = run_url[len(runs_page):].split("/", 1)[0]
        lr_keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("hparams/lr_"))
        assert lr_keys == ["hparams/lr_backbone", "hparams/lr_head", "hparams/lr_probe"], lr_keys
        run_name = client.get_run(run_id).info.run_name
        with Browser(width=1600, height=1100) as browser:
            browser.open(run_url, ready="document.body.innerText.includes('hparams')", timeout=120)
            # The charts of a section below the fold render once it is scrolled into view.
            browser.evaluate("[...document.querySelectorAll('div')].find(e => !e.children.length && e.innerText.trim() == 'hparams').scrollIntoView()")
            charts = " && ".join(f"document.body.innerText.includes('{run_name} ({k})')" for k in lr_keys)
            browser.wait_for(charts, timeout=120)
            text = browser.evaluate("document.body.innerText")
            shot = browser.screenshot(tmp_path / "mlflow-run-metrics.png")
            browser.open(f"{base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning",
                         ready=f"document.body.innerText.includes('{run_name}')", timeout=120)
            overview = browser.evaluate("document.body.innerText")
        assert "Model metrics" in text and all(f"{run_name} ({k})" in text for k in lr_keys)
        assert "Model registry" in overview and "Token Usage" not in overview  # the model-training view, not GenAI's
        assert png_size(shot) == (1600, 1100) and shot.stat().st_size > 30_000
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
