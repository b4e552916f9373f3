"""Dashboards on a real small sweep: the HTML report's data against MLflow, optuna-dashboard, the W&B spec, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboard_helpers.sweep import OPTIMIZERS, free_port, make_sweep, wait_http
from sptrack.dashboard.__main__ import main
from sptrack.dashboard.collect import collect, optimizer_settings
from sptrack.dashboard.report import embedded_data
from sptrack.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def trials(sweep):
    return optuna.load_study(study_name=sweep.study, storage=sweep.storage).get_trials()


def test_study_report_plots_exactly_the_metric_histories(sweep, trials, tmp_path, capsys):
    assert main(["report", "--tracking-uri", sweep.mlflow_uri, "--study", sweep.study, "--out", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    text = (tmp_path / "report.html").read_text()
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(run_ids) == sweep.trials
    for run_id in run_ids:
        assert f'<tr data-run-id="{run_id}">' in text
    for name in OPTIMIZERS:  # one chart per optimizer's lr
        assert f'data-metric="hparams/lr_{name}"' in text and f'id="chart-hparams-lr_{name}"' in text
    assert not re.search(r"<(script|link|img)[^>]*\s(src|href)=\"?https?:", text)  # self-contained (the browser test checks requests)
    assert "Plotly.newPlot" in text

    data = embedded_data(text)
    client = MlflowClient(sweep.mlflow_uri)
    assert [r["run_id"] for r in data["runs"]] == run_ids  # trial order, study parent left out
    assert set(data["histories"]) == {"hparams/lr_backbone", "hparams/lr_head", "train/loss", "eval/knn_acc"}
    for key, per_run in data["histories"].items():
        assert set(per_run) == set(run_ids), key
        for run_id, series in per_run.items():
            history = client.get_metric_history(run_id, key)
            assert series["step"] == [m.step for m in history] and series["value"] == [m.value for m in history], (key, run_id)
    lr = data["histories"]["hparams/lr_backbone"][run_ids[0]]["value"]
    assert len(set(lr)) > 2 and max(lr) > lr[-1]  # warm-up + cosine: a real curve, not one value
    head_steps = data["histories"]["hparams/lr_head"][run_ids[0]]["step"]
    assert head_steps == sorted(head_steps) and head_steps[0] in (0, 1)  # on the global_step axis

    study = data["study"]
    assert study["name"] == sweep.study and study["objective"] == "optuna/objective"
    assert study["params"] == sorted(trials[0].params)
    by_id = {r["run_id"]: r for r in data["runs"]}
    for t in trials:
        run = by_id[t.user_attrs["run_id"]]
        assert run["trial_number"] == t.number and run["trial_state"] == t.state.name
        assert run["final"]["optuna/objective"] == pytest.approx(t.value)
        assert run["params"] == pytest.approx(t.params)
        # per-optimizer settings come from the run's optim.<name>.<field> params (the recipe's and the summary's)
        assert float(run["optimizers"]["backbone"]["lr"]) == pytest.approx(t.params["optim.backbone.lr"])
        assert run["optimizers"]["head"]["frequency"] == str(t.params["optim.head.frequency"])
        assert run["optimizers"]["backbone"]["scheduler"] != "None" and run["optimizers"]["head"]["scheduler"] == "None"
    assert 'data-chart="parallel-coordinates"' in text and text.count("data-param=") == len(study["params"])

    pngs = sorted((tmp_path / "png").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"hparams-lr_backbone.png", "hparams-lr_head.png", "parallel-coordinates.png"} <= names
    assert len(pngs) == 4 + len(study["params"]) + 1
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000, p


def test_optimizer_settings_are_read_under_their_one_name():
    params = {
        "optim.backbone.lr": "0.3", "optim.backbone.frequency": "1", "optim.backbone.scheduler": "None",  # the recipe's
        "optim.backbone.class": "LARS", "optim.backbone.num_params": "120",  # the optimizer summary's
        "optim.head.optimizer.lr": "0.01", "optim.head.optimizer.weight_decay": "0.05",  # Module(optim=...)'s form
        "optim.head.scheduler.type": "CosineAnnealingLR", "optim.head.class": "AdamW",
        "model.dim": "8",
    }
    assert optimizer_settings(params) == {
        "backbone": {"class": "LARS", "lr": "0.3", "frequency": "1", "scheduler": "None", "num_params": "120"},
        "head": {"class": "AdamW", "lr": "0.01", "weight_decay": "0.05"},
    }
    # An optimizer known by its lr metric only, and a run tracked with the former optim/<name>/<field> names.
    assert optimizer_settings({"optim.probe.lr": "0.001"}, ["hparams/lr_probe", "train/loss"]) == {"probe": {"lr": "0.001"}}
    assert optimizer_settings({"optim/head/class": "AdamW", "optim/head/lr": "0.01"}) == {"head": {"class": "AdamW", "lr": "0.01"}}


def test_experiment_report_keeps_only_the_selected_runs(sweep, trials, tmp_path):
    chosen = [trials[2].user_attrs["run_id"], trials[0].user_attrs["run_id"][:10]]  # a full id and a unique prefix
    out = tmp_path / "exp"
    assert main(["report", "--tracking-uri", sweep.mlflow_uri, "--experiment", sweep.experiment, "--runs", ",".join(chosen),
                 "--out", str(out), "--no-png"]) == 0
    data = embedded_data((out / "report.html").read_text())
    assert [r["run_id"] for r in data["runs"]] == [trials[2].user_attrs["run_id"], trials[0].user_attrs["run_id"]]
    assert data["study"] is None and not (out / "png").exists()
    assert set(data["histories"]["hparams/lr_head"]) == {r["run_id"] for r in data["runs"]}


@pytest.mark.parametrize("kwargs, key, hint", [
    ({"experiments": ["dash-exq"]}, "--experiment", "Did you mean 'dash-exp'?"),
    ({"study": "dahs"}, "--study", "Did you mean 'dash'?"),
    ({"study": "dash", "run_ids": ["not-a-run"]}, "--runs", "Runs there: "),
])
def test_unknown_selection_names_the_option_and_the_closest_value(sweep, kwargs, key, hint):
    with pytest.raises(ConfigError) as info:
        collect(sweep.mlflow_uri, **kwargs)
    assert info.value.key == key and hint in str(info.value)


def test_bad_run_id_on_the_command_line_is_one_line(sweep, trials, tmp_path, capsys):
    typo = trials[1].user_attrs["run_id"][:-1] + "x"
    assert main(["report", "--tracking-uri", sweep.mlflow_uri, "--study", sweep.study, "--runs", typo, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --runs: run '{typo}' is not in study 'dash'.")
    assert f"Did you mean '{trials[1].user_attrs['run_id']}'?" in err[0]
    assert not (tmp_path / "report.html").exists()


def test_optuna_dashboard_serves_the_study(sweep, trials, tmp_path):
    port, log = free_port(), tmp_path / "optuna-dashboard.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sptrack.dashboard", "optuna", "--storage", sweep.storage, "--port", str(port),
                                 "--study", sweep.study], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/studies", proc, log)
        with urllib.request.urlopen(f"{url}/api/studies", timeout=10) as r:
            (summary,) = [s for s in json.load(r)["study_summaries"] if s["study_name"] == sweep.study]
        with urllib.request.urlopen(f"{url}/api/studies/{summary['study_id']}", timeout=30) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == sweep.trials == len(trials)
        assert sorted(t["number"] for t in detail["trials"]) == list(range(sweep.trials))
        assert f"optuna-dashboard at {url}/dashboard/studies/{summary['study_id']}" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_launchers_refuse_a_store_that_does_not_exist(sweep, capsys):
    missing = sweep.storage.replace("study.db", "studdy.db")
    assert main(["optuna", "--storage", missing, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage: ") and "does not exist" in err and "study.db'?" in err
    assert main(["mlflow-ui", "--backend-store-uri", sweep.mlflow_uri.replace("mlflow.db", "mlflow.bd")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --backend-store-uri: ") and "mlflow.db'?" in err


def test_wandb_workspace_spec_builds_offline_with_the_right_keys(sweep, tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("the W&B spec must build without the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "spec.json"
    assert main(["wandb", "--entity", "team", "--project", "ssl", "--study", sweep.study, "--storage", sweep.storage, "--out", str(out)]) == 0
    assert "validated offline" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    from sptrack.dashboard.wandb_workspace import panel_metrics, validate_spec

    validate_spec(spec)
    assert spec["entity"] == "team" and spec["project"] == "ssl"
    metrics = panel_metrics(spec)
    assert metrics["Learning rates"] == [f"hparams/lr_{name}" for name in OPTIMIZERS]  # optimizer names read from the study
    assert metrics["Probes and loss"] == ["eval/probe_acc", "eval/knn_acc", "eval/rankme", "train/loss"]
    params = sorted(optuna.load_study(study_name=sweep.study, storage=sweep.storage).best_trial.params)
    assert metrics["Study"] == [f"config:{p}.value" for p in params] + ["summary:optuna/objective", "optuna/objective"]
    sections = {s["name"]: s for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}
    kinds = [p["viewType"] for p in sections["Study"]["panels"]]
    assert kinds == ["Parallel Coordinates Plot", "Parameter Importance"]
    assert all(p["config"]["xAxis"] == "trainer/global_step" for p in sections["Learning rates"]["panels"])
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["grouping"] == [{"section": "run", "name": "group"}]  # grouped by study (the W&B group)
    assert runset["filters"]["filters"][0] == {"key": {"section": "run", "name": "group"}, "op": "=", "value": sweep.study, "disabled": False}

    broken = json.loads(out.read_text())
    for section in broken["spec"]["section"]["panelBankConfig"]["sections"]:
        if section["name"] == "Learning rates":
            section["panels"] = []
    with pytest.raises(ValueError, match="Learning rates"):
        validate_spec(broken)
