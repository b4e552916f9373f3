"""Sweeps and MLflow on a real PostgreSQL server (tests/pg_helpers): the CLI as subprocesses, read back with optuna and MLflow.

The server is started by the session fixture ``postgres`` (skipped where PostgreSQL is not
installed; under ``CI=true`` that is a failure). Every storage URL carries the ``sptrack`` role's
password, which no command may print.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pg_helpers.server import postgres_fixture  # noqa: F401 - the session fixture ``postgres``
from sptrack.recipe.loading import load_recipe
from sptrack.tune.space import SearchSpace
from sptrack.tune.study import counted_trials
from sptrack.tune.tracking import PARENT_ATTR, TAG_PARAM, TAG_STATE, TAG_STUDY, TAG_TRIAL

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(ROOT / "tests" / "tune_helpers" / "tiny_recipe.py")


def _retried(trial):
    """The number of the trial ``trial`` retries (None: not a retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def _env() -> dict:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI", "SPTRACK_TRACKER")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PG")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _start(args: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """``python -m sptrack.run ARGS`` in the background, stdout and stderr into ``<cwd>/<name>.out``."""
    out = cwd / f"{name}.out"
    with open(out, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "sptrack.run", *args], cwd=cwd, env=_env(),
                                stdout=handle, stderr=subprocess.STDOUT)
    return proc, out


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 240, code: int = 0) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = out.read_text(errors="replace")
    assert proc.returncode == code, f"exit {proc.returncode}:\n{text[-6000:]}"
    return text


def _space() -> dict:
    return {p.key: p for p in SearchSpace.from_config(load_recipe(TINY_RECIPE).default_config()).params}


def _assert_in_space(trial, space: dict) -> None:
    assert set(trial.params) == set(space), trial.params
    assert all(space[k].contains(v) for k, v in trial.params.items()), trial.params


def _heartbeats(postgres, study: str) -> int:
    """The heartbeats the study's trials have in Optuna's schema (0 before the first trial's thread has beaten)."""
    import psycopg

    try:
        with postgres.connect("optuna") as conn:
            return conn.execute("SELECT count(*) FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id "
                                "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = %s", (study,)).fetchone()[0]
    except psycopg.errors.UndefinedTable:  # the worker has not created Optuna's schema yet
        return 0


def test_two_workers_and_a_killed_one_share_a_postgres_study(postgres, tmp_path):
    """A worker is killed mid-trial; two concurrent commands fail its trial (once), retry it and finish the study."""
    url, record = postgres.url("optuna"), tmp_path / "record"
    common = [TINY_RECIPE, f"trainer.output_dir={tmp_path}", f"record_dir={record}", "--tracker", "none", "--sweep",
              "--storage", url, "--study", "pg-k", "--heartbeat", "1", "--pruner", "none"]
    outputs = []

    # 1. Alone on the new study, the first worker takes trial 0 and is SIGKILLed while training it (3 s a batch),
    # once the trial's heartbeat is in the database (a trial that never beat is never failed as stale).
    worker, out = _start([*common, "--trials", "4", "step_sleep_s=3"], tmp_path, "killed")
    try:
        deadline = time.monotonic() + 120
        while not (record / "trial-0-rank0.json").exists() or not _heartbeats(postgres, "pg-k"):
            assert worker.poll() is None, out.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the first worker never started training"
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    outputs.append(out.read_text(errors="replace"))
    (running,) = optuna.load_study(study_name="pg-k", storage=url).trials
    assert running.number == 0 and running.state == TrialState.RUNNING

    # 2. Two concurrent commands on the same URL. Both call fail_stale_trials on the dead trial (its heartbeat is
    # 2 s old by the time either has imported torch; if not, the later admissions catch it: every trial of "b" outlasts
    # the 2 s grace period), PostgreSQL's row lock lets exactly one of them fail it and queue its copy.
    # Their N differ by one (3 and 4): with no admission lock on a remote database, two workers that see N - 1
    # counted trials at the same instant would both start one; here only "b" may start the N-th, so the study
    # ends with exactly 4 counted trials, whatever the timing. "b"'s trials are the slow ones (8 x 0.3 s), so
    # "a" (threshold 3) stops first and the 4th counted trial is always "b"'s.
    a = _start([*common, "--trials", "3", "step_sleep_s=0.05"], tmp_path, "a")
    b = _start([*common, "--trials", "4", "step_sleep_s=0.3"], tmp_path, "b")
    outputs += [_finish(*a), _finish(*b)]

    trials = optuna.load_study(study_name="pg-k", storage=url).trials
    assert sorted(t.number for t in trials) == list(range(5)), [t.number for t in trials]  # none lost, none twice
    assert Counter(t.state for t in trials) == {TrialState.FAIL: 1, TrialState.COMPLETE: 4}, [(t.number, t.state) for t in trials]
    killed = trials[0]
    assert killed.state == TrialState.FAIL and _retried(killed) is None and "worker" not in killed.user_attrs
    (retry,) = [t for t in trials if _retried(t) == 0]  # queued once, though both commands saw the stale trial
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    counted = counted_trials(trials)
    assert sorted(t.number for t in counted) == [1, 2, 3, 4] and all(t.state == TrialState.COMPLETE for t in counted)
    space = _space()
    for t in trials:
        _assert_in_space(t, space)
    for t in counted:
        assert t.value is not None and 0.0 <= t.value <= 1.0  # eval/knn_acc
    # Who ran what: the two commands' PIDs, never the killed one's; "b" always runs one (see above), "a" almost surely.
    workers = Counter(t.user_attrs["worker"].rsplit(":", 1)[1] for t in counted)
    assert set(workers) <= {str(a[0].pid), str(b[0].pid)}, workers
    assert workers[str(b[0].pid)] >= 1, workers
    assert len(workers) == 2, f"one command ran every trial: {workers}"

    for text in outputs:
        assert postgres.password not in text
    assert "sptrack:***@127.0.0.1" in outputs[2]  # the report's optuna-dashboard command, masked


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """``mlflow server --backend-store-uri postgresql://...`` (the ``mlflow`` database) on a free port; killed by PID."""
    from track_helpers.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), backend_uri=postgres.url("mlflow"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_sweep_runs_land_in_an_mlflow_server_on_postgres(postgres, mlflow_on_postgres, tmp_path):
    """A 3-trial sweep (study on PostgreSQL) tracked by an MLflow server whose backend store is PostgreSQL too."""
    from mlflow.tracking import MlflowClient

    url, experiment = postgres.url("optuna"), "pg-sweep"
    proc = _start([TINY_RECIPE, f"trainer.output_dir={tmp_path}", "--tracker", "mlflow", f"tracker.uri={mlflow_on_postgres.url}",
                   f"tracker.experiment={experiment}", "--sweep", "--trials", "3", "--storage", url, "--study", "pg-m",
                   "--pruner", "none", "--sampler", "random"], tmp_path, "sweep")
    output = _finish(*proc)
    assert postgres.password not in output

    study = optuna.load_study(study_name="pg-m", storage=url)
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    space = _space()
    for t in trials:
        _assert_in_space(t, space)

    client = MlflowClient(mlflow_on_postgres.url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sptrack.role") == "study"]
    assert [r.info.run_id for r in parents] == [study.user_attrs[PARENT_ATTR]]
    parent = parents[0]
    children = {r.info.run_id: r for r in runs if r.info.run_id != parent.info.run_id}
    assert set(children) == {t.user_attrs["run_id"] for t in trials}  # one run per trial, nothing else
    for t in trials:
        run = children[t.user_attrs["run_id"]]
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags[TAG_STUDY] == "pg-m" and tags[TAG_TRIAL] == str(t.number)
        assert tags[TAG_STATE] == "COMPLETE" and run.info.status == "FINISHED"
        # The sampled values, as tags and in the run's logged config (optim.<name>.<key>; "/" or "." between the parts).
        assert {k: float(tags[TAG_PARAM + k]) for k in t.params} == pytest.approx(t.params)
        params = {k.replace("/", "."): v for k, v in run.data.params.items()}
        assert all(k in params for k in t.params), sorted(params)
        assert {k: float(params[k]) for k in t.params} == pytest.approx(t.params)
        assert run.data.metrics["optuna/objective"] == pytest.approx(t.value)
    assert parent.data.tags["sptrack.best_run_id"] == study.best_trial.user_attrs["run_id"]
    assert client.get_run(parent.info.run_id).data.metrics["sweep/best_value"] == pytest.approx(study.best_value)
    for r in runs:  # nothing the sweep logged carries the storage password
        assert postgres.password not in repr(r.data.params) + repr(r.data.tags)
    assert postgres.password not in mlflow_on_postgres.log()  # nor the server's own log (it has the URL on its command line)


def test_wrong_password_is_one_line_and_never_printed(postgres, tmp_path, capfd, monkeypatch):
    """The real server refuses a wrong password: exit 2, one ``error: --storage`` line, neither password shown.

    In-process (the CLI's ``main``, which is what ``python -m sptrack.run`` calls): no interpreter start to pay for.
    """
    from sptrack.run.cli import main

    monkeypatch.chdir(tmp_path)
    wrong = "wrong-" + postgres.password[::-1]
    code = main([TINY_RECIPE, f"trainer.output_dir={tmp_path}", "--tracker", "none", "--sweep", "--trials", "1",
                 "--storage", postgres.url("optuna", password=wrong), "--study", "pg-w"])
    out, err = capfd.readouterr()
    text = out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert errors[0].startswith("error: --storage: cannot open postgresql://sptrack:***@127.0.0.1:"), errors[0]
    assert "password authentication failed" in errors[0], errors[0]
    assert wrong not in text and postgres.password not in text
    assert "pg-w" not in optuna.get_all_study_names(postgres.url("optuna"))


def test_admission_on_a_postgres_study_waits_for_the_server_side_lock(postgres, tmp_path):
    """While another client holds a study's admission lock (pg_advisory_lock on the server), a worker on that study
    opens it but starts no trial; once the lock is released it runs its trial. So "count, then ask" of workers on
    different machines cannot interleave, and a study never holds more than N trials."""
    from sptrack.tune.storage import admission_lock, resolve_storage

    url = postgres.url("optuna")
    args = [TINY_RECIPE, f"trainer.output_dir={tmp_path}", "--tracker", "none", "--sweep", "--storage", url, "--study", "pg-lock",
            "--pruner", "none", "--trials", "1"]
    # One storage (one small connection pool) for all the polling: a new one per poll would pile up
    # connections until the garbage collector closes them, against the server's max_connections.
    watcher = optuna.storages.RDBStorage(url)

    def said() -> str:
        return out.read_text(errors="replace")[-4000:] + "\n--- postgres log ---\n" + postgres.log_tail(2000)

    with admission_lock(resolve_storage(url, str(tmp_path)), "pg-lock"):
        proc, out = _start(args, tmp_path, "blocked")
        deadline = time.monotonic() + 120
        while "pg-lock" not in optuna.get_all_study_names(watcher):
            assert proc.poll() is None and time.monotonic() < deadline, said()
            time.sleep(0.2)
        time.sleep(3.0)  # the worker has had time to ask for a trial
        assert proc.poll() is None, said()
        assert optuna.load_study(study_name="pg-lock", storage=watcher).trials == []
    text = _finish(proc, out)
    (trial,) = optuna.load_study(study_name="pg-lock", storage=url).trials
    assert trial.state == TrialState.COMPLETE and postgres.password not in text
