"""MLflow tracking against a real ``mlflow server`` (SQLite backend) on 127.0.0.1.

One server serves the whole module (it takes 5-14 s to start); the outage tests kill it by PID
and start it again on the same port and database. Every expected learning rate comes from
:class:`LrRecorder`, which reads the optimizers' own ``param_groups`` when they step, so the
tracked ``hparams/lr_<name>`` points are compared with the lrs actually used, at
``trainer.global_step`` steps.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sptrack.track import TrackerError, TrackerLogger, TrackerUnreachableError, tracker_callbacks
from sptrack.track.mlflow import MLflowTracker, resolve_tracking_uri
from track_helpers.common import (
    BACKBONE_CLIP,
    CONFIG,
    SECRETS,
    STEPS_PER_EPOCH,
    TRAINER_CLIP,
    LrRecorder,
    StepHook,
    build_module,
    make_loader,
    make_trainer,
    num_params,
)
from track_helpers.mlflow_server import free_port

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OPTIM_FIELDS = {
    "index", "class", "lr", "weight_decay", "modules", "matched_modules", "num_params", "frequency",
    "scheduler", "interval", "monitor", "gradient_clip_val", "gradient_clip_algorithm",
}


@pytest.fixture
def experiment(request) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    return client.search_runs([exp.experiment_id])


def _only_run(client, experiment: str):
    runs = _runs(client, experiment)
    assert len(runs) == 1, f"expected exactly one run, found {len(runs)}"
    return runs[0]


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    steps = [s for s, _ in points]
    assert len(steps) == len(set(steps)), f"{key}: duplicate steps {steps}"
    return points


def _one_name(params: dict, name: str, field: str) -> str:
    """The value of optimizer ``name``'s ``field``, asserting that exactly one param holds it."""
    keys = [k for k in (f"optim.{name}.{field}", f"optim.{name}.optimizer.{field}") if k in params]
    assert len(keys) == 1, f"{name}.{field} is logged as {keys}"
    return params[keys[0]]


def _tracker(mlflow_server, experiment, tmp_path, **kwargs) -> MLflowTracker:
    options = dict(system_metrics=False, flush_interval_s=0.2, retry_interval_s=0.2, work_dir=str(tmp_path))
    options.update(kwargs)
    return MLflowTracker(tracking_uri=mlflow_server.url, experiment=experiment, **options)


def _artifact(client, run_id: str, path: str, tmp_path: Path) -> str:
    local = client.download_artifacts(run_id, path, str(tmp_path / f"dl-{uuid.uuid4().hex[:6]}"))
    return Path(local).read_text()


def _assert_lr_history(client, run_id: str, recorder_points: dict) -> None:
    assert set(recorder_points) == {"backbone", "head"}
    for name, expected in recorder_points.items():
        assert _history(client, run_id, f"hparams/lr_{name}") == expected, name


# ---------------------------------------------------------------------------------------- one run
def test_two_optimizer_run_is_fully_tracked(mlflow_server, experiment, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "# the recipe of the tracker test\n"
        "model:\n  hidden: 16\n"
        "tracking:\n"
        "  api_key: sk-live-0123456789abcdef   # never in a tracker\n"
        "  url: https://alice:hunter2@example.invalid/mlflow\n"
    )
    long_key = "k" * 300
    config = {**CONFIG, "notes": "n" * 7000, "deep": {long_key: 1}, "metrics": {"acc@1": 0.5}}
    tracker = _tracker(mlflow_server, experiment, tmp_path, system_metrics=True, system_metrics_interval_s=0.1)
    recorder = LrRecorder()
    module = build_module()
    trainer = make_trainer(
        [*tracker_callbacks(tracker, config=config, recipe_path=str(recipe)), recorder, StepHook(-1, None, sleep_s=0.05)],
        max_epochs=2,
    )
    trainer.fit(module, make_loader(), make_loader(seed=1))
    assert trainer.global_step == 2 * STEPS_PER_EPOCH

    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    run_id = run.info.run_id
    assert run_id == tracker.run_id and run.info.status == "FINISHED"

    # hparams/lr_<name> at every optimizer step: the optimizer's own lr, at global_step-based steps.
    _assert_lr_history(client, run_id, recorder.points)
    assert [s for s, _ in recorder.points["backbone"]] == list(range(10))
    assert [s for s, _ in recorder.points["head"]] == [1, 3, 5, 7, 9]  # frequency 2
    assert len({v for _, v in recorder.points["backbone"]}) == 10  # the scheduler changes it every step
    # Training and validation metrics on the same axis (batches, not optimizers x batches).
    assert [s for s, _ in _history(client, run_id, "train_loss")] == list(range(10))
    # Lightning logs validation at the step of the training batch it follows (global_step - 1 then).
    assert [s for s, _ in _history(client, run_id, "val_loss")] == [4, 9]

    # Hyper-parameters: dotted, full length, secrets masked, over-long values in an artifact.
    params = run.data.params
    assert params["model.hidden"] == "16" and params["optim.head.optimizer.weight_decay"] == "0.05"
    assert params["data.augment"] == '["flip","crop"]'
    assert params["tracking.api_key"] == "***"
    assert params["tracking.url"] == "https://alice:***@example.invalid/mlflow"
    assert not any(secret in value for value in params.values() for secret in SECRETS)
    assert not list((tmp_path / ".sptrack").rglob("*.rejected.jsonl")), "MLflow refused records"
    assert params["notes"].startswith("<7000 characters") and "params/notes.txt" in params["notes"]
    assert _artifact(client, run_id, "params/notes.txt", tmp_path) == "n" * 7000
    assert params["metrics.acc_1"] == "0.5"  # '@' is not allowed in MLflow keys
    short = [k for k in params if k.startswith("deep.")]
    assert len(short) == 1 and len(short[0]) == 250
    assert json.loads(_artifact(client, run_id, "params/long_keys.json", tmp_path)) == {short[0]: f"deep.{long_key}"}
    assert params["trainer/world_size"] == "1" and params["trainer/strategy"] == "SingleDeviceStrategy"

    # One name per optimizer setting, in the config's scheme: the config's own keys (CONFIG is in
    # Module(optim=...)'s form: lr and weight_decay inside `optimizer`), and for what it lacks, the
    # optimizer summary's optim.<name>.<field> params.
    assert not [k for k in params if k.startswith("optim/")], "the old optim/<name>/<field> names are back"
    expected = {
        "backbone": {"index": "0", "class": "SGD", "lr": "0.1", "weight_decay": "0.0", "modules": "backbone",
                     "matched_modules": '["backbone"]', "num_params": str(num_params(module.backbone)),
                     "frequency": "1", "scheduler": "CosineAnnealingLR", "interval": "step", "monitor": "None",
                     "gradient_clip_val": str(BACKBONE_CLIP), "gradient_clip_algorithm": "norm"},
        "head": {"index": "1", "class": "AdamW", "lr": "0.01", "weight_decay": "0.05", "modules": "head",
                 "matched_modules": '["head"]', "num_params": str(num_params(module.head)), "frequency": "2",
                 "scheduler": "CosineAnnealingLR", "interval": "step", "monitor": "None",
                 "gradient_clip_val": str(TRAINER_CLIP), "gradient_clip_algorithm": "value"},
    }
    for name, fields in expected.items():
        assert set(fields) == OPTIM_FIELDS
        assert {f: _one_name(params, name, f) for f in fields} == fields, name
    assert params["optim.backbone.optimizer.lr"] == "0.1" and "optim.backbone.lr" not in params  # the config's
    assert params["optim.head.scheduler.type"] == "CosineAnnealingLR" and params["optim.head.scheduler"] == "CosineAnnealingLR"
    assert params["optim.head.gradient_clip_val"] == str(TRAINER_CLIP)  # the config has none: the Trainer's, from the summary
    # ... and as a table artifact (JSON and CSV).
    table = json.loads(_artifact(client, run_id, "optim/summary.json", tmp_path))
    rows = {row[table["columns"].index("name")]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) == {"backbone", "head"}
    assert rows["head"]["num_params"] == num_params(module.head) and rows["head"]["gradient_clip_val"] == TRAINER_CLIP
    assert rows["backbone"]["lr"] == 0.1 and rows["backbone"]["lr_at_start"] == 0.1
    csv = _artifact(client, run_id, "optim/summary.csv", tmp_path).splitlines()
    assert csv[0].split(",")[:4] == ["index", "name", "class", "lr"] and len(csv) == 3

    # Recipe (redacted, layout kept), resolved config and environment as artifacts.
    text = _artifact(client, run_id, "recipe/recipe.yaml", tmp_path)
    assert "api_key: ***   # never in a tracker" in text and "alice:***@" in text
    assert not any(secret in text for secret in SECRETS)
    resolved = json.loads(_artifact(client, run_id, "config/resolved.json", tmp_path))
    assert resolved["model"] == CONFIG["model"] and resolved["tracking"]["api_key"] == "***"
    env = json.loads(_artifact(client, run_id, "environment.json", tmp_path))
    import mlflow

    assert env["key_packages"]["mlflow"] == mlflow.__version__ and env["key_packages"]["torch"] == torch.__version__
    import sptrack

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0 and Path(sptrack.__file__).resolve().is_relative_to(ROOT):  # not for an installed copy
        commits = {g["commit"] for g in (env["git"], env["sptrack_git"]) if g}
        assert head.stdout.strip() in commits

    # System metrics (psutil) on the same step axis.
    if importlib.util.find_spec("psutil") is not None:
        # Sampled by time (several samples may share a step), at the latest global step.
        cpu = [(m.step, m.value) for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
        assert cpu and all(0 <= s <= 10 and 0 <= v <= 100 for s, v in cpu)
        assert client.get_metric_history(run_id, "system/system_memory_usage_megabytes")

    # The public search API sees the same single run.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        frame = mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(frame["run_id"]) == [run_id] and list(frame["status"]) == ["FINISHED"]
    assert frame["params.optim.head.class"][0] == "AdamW"


def test_failing_run_is_marked_failed_with_its_points(mlflow_server, experiment, tmp_path):
    tracker = _tracker(mlflow_server, experiment, tmp_path)
    recorder = LrRecorder()
    trainer = make_trainer([*tracker_callbacks(tracker, config=CONFIG), recorder])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(build_module(fail_at_batch=3), make_loader())
    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    assert run.info.status == "FAILED"
    assert [s for s, _ in recorder.points["backbone"]] == [0, 1, 2]
    _assert_lr_history(client, run.info.run_id, recorder.points)


def test_keyboard_interrupt_marks_the_run_killed(mlflow_server, experiment, tmp_path):
    def interrupt(trainer):
        raise KeyboardInterrupt

    tracker = _tracker(mlflow_server, experiment, tmp_path)
    recorder = LrRecorder()
    trainer = make_trainer([*tracker_callbacks(tracker), recorder, StepHook(2, interrupt)])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
            trainer.fit(build_module(), make_loader())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning leaves SIGINT ignored
    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    assert run.info.status == "KILLED"
    assert [s for s, _ in recorder.points["backbone"]] == [0, 1]
    _assert_lr_history(client, run.info.run_id, recorder.points)


def test_unreachable_server_fails_fast_in_one_line(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    tracker = MLflowTracker(tracking_uri=uri, experiment="never", work_dir=str(tmp_path))
    recorder = LrRecorder()
    trainer = make_trainer([*tracker_callbacks(tracker), recorder])
    started = time.monotonic()
    with pytest.raises(TrackerUnreachableError) as info:
        trainer.fit(build_module(), make_loader())
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "\n" not in message and uri in message and "unreachable" in message
    assert trainer.global_step == 0 and not recorder.points and tracker.run_id is None


# ---------------------------------------------------------------------------------------- resume
def test_resume_from_checkpoint_continues_the_same_run(mlflow_server, experiment, tmp_path, caplog):
    ckpt_dir = tmp_path / "ckpt"
    first, rec1 = _tracker(mlflow_server, experiment, tmp_path), LrRecorder()
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    make_trainer([*tracker_callbacks(first, config=CONFIG), rec1, checkpoints], max_epochs=2, enable_checkpointing=True).fit(
        build_module(), make_loader()
    )
    epoch0 = sorted(ckpt_dir.glob("epoch=0*.ckpt"))
    assert len(epoch0) == 1
    assert torch.load(epoch0[0], weights_only=False)["sptrack_tracker"] == {"version": 1, "runs": {"mlflow": first.run_id}}

    # A new job (new tracker object) resumes from the epoch-0 checkpoint and trains one more epoch:
    # steps 5..9 are run again (already in the run: not duplicated), 10..14 are new.
    second, rec2 = _tracker(mlflow_server, experiment, tmp_path), LrRecorder()
    with caplog.at_level(logging.WARNING, logger="sptrack.track"):
        make_trainer([*tracker_callbacks(second, config=CONFIG), rec2], max_epochs=3).fit(
            build_module(), make_loader(), ckpt_path=str(epoch0[0])
        )
    assert second.run_id == first.run_id and second.resumed

    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert rec2.points["backbone"][:5] == rec1.points["backbone"][5:]  # exact resume recomputes the same lrs
    expected = {name: rec1.points[name] + [p for p in rec2.points[name] if p[0] >= 10] for name in rec1.points}
    assert [s for s, _ in expected["backbone"]] == list(range(15))
    assert [s for s, _ in expected["head"]] == [1, 3, 5, 7, 9, 11, 13]
    _assert_lr_history(client, run.info.run_id, expected)
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == list(range(15))
    # MLflow params cannot change: the new max_epochs is reported, not lost.
    assert run.data.params["trainer/max_epochs"] == "2"
    changed = json.loads(_artifact(client, run.info.run_id, "params/changed_1.json", tmp_path))
    assert changed == {"trainer/max_epochs": {"logged": "2", "new": "3"}}
    assert any("trainer/max_epochs" in r.getMessage() for r in caplog.records)


def _torchrun(args: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(TESTS / "track_helpers" / "ddp_worker.py"), *args,
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out\n{output[-8000:]}")
    assert proc.returncode == 0, output[-8000:]


# FSDP2 only: its resume reads a distributed checkpoint folder, DDP's a file (the one-run-per-job rule under DDP is
# tests/test_run_cli.py's and tests/test_launch.py's; a tracked run resumed in one process, tests/test_exact_resume.py's).
@pytest.mark.parametrize("strategy, strategy_class", [("fsdp2", "FSDP2Strategy")])
def test_two_processes_make_one_run_and_resume_it(mlflow_server, experiment, tmp_path, strategy, strategy_class):
    """2-process FSDP2 (distributed checkpoint folder): one run, resumed by the next job."""
    common = ["--uri", mlflow_server.url, "--experiment", experiment, "--ckpt-dir", str(tmp_path / "ckpt"), "--strategy", strategy]
    _torchrun([*common, "--out", str(tmp_path / "job1"), "--max-epochs", "1"], tmp_path)
    ckpt = sorted((tmp_path / "ckpt").glob("epoch=0*.ckpt"))
    assert len(ckpt) == 1
    _torchrun([*common, "--out", str(tmp_path / "job2"), "--max-epochs", "2", "--resume", str(ckpt[0])], tmp_path)

    jobs = [[json.loads((tmp_path / job / f"rank{r}.json").read_text()) for r in range(2)] for job in ("job1", "job2")]
    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    run_id = run.info.run_id
    # Every rank of both jobs knows the run id (broadcast / checkpoint); only rank 0 ran the tracker.
    assert {r["run_id"] for job in jobs for r in job} == {run_id}
    assert [r["world_size"] for job in jobs for r in job] == [2, 2, 2, 2]
    assert [job[1]["active"] for job in jobs] == [False, False]
    assert run.info.status == "FINISHED"
    expected = {name: jobs[0][0]["lrs"][name] + jobs[1][0]["lrs"][name] for name in ("backbone", "head")}
    expected = {name: [tuple(p) for p in points] for name, points in expected.items()}
    assert [s for s, _ in expected["backbone"]] == list(range(10))
    _assert_lr_history(client, run_id, expected)
    assert [s for s, _ in _history(client, run_id, "train_loss")] == list(range(10))
    assert run.data.params["trainer/world_size"] == "2" and run.data.params["trainer/strategy"] == strategy_class
    assert run.data.params["optim.head.frequency"] == "2" and run.data.params["optim.head.class"] == "AdamW"


# ---------------------------------------------------------------------------------------- outages
def test_server_killed_mid_run_and_restarted_loses_no_point(mlflow_server, experiment, tmp_path, caplog):
    restarts: list[BaseException] = []

    def outage(trainer):
        assert tracker.flush(timeout=30)  # what came before the outage is on the server
        mlflow_server.kill()

        def restart():
            try:
                mlflow_server.start()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                restarts.append(e)

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        threads.append(thread)

    threads: list[threading.Thread] = []
    tracker = _tracker(mlflow_server, experiment, tmp_path, max_buffered_points=5, spill_after_s=1000, finish_timeout_s=120)
    recorder = LrRecorder()
    batch_times: list[float] = []
    timer = StepHook(-1, None)
    timer.on_train_batch_end = lambda *a, **k: batch_times.append(time.monotonic())
    with caplog.at_level(logging.WARNING, logger="sptrack.track"):
        make_trainer([*tracker_callbacks(tracker, config=CONFIG), recorder, StepHook(3, outage, sleep_s=0.1), timer], max_epochs=4).fit(
            build_module(), make_loader()
        )
    for thread in threads:
        thread.join(timeout=120)
    assert not restarts, restarts
    # Training never waited for the server.
    assert max(b - a for a, b in zip(batch_times, batch_times[1:])) < 2.0
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in messages and "written to" in messages and "reachable again" in messages, messages

    client = _client(mlflow_server.url)
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in recorder.points["backbone"]] == list(range(20))
    _assert_lr_history(client, run.info.run_id, recorder.points)
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == list(range(20))
    assert not list((tmp_path / ".sptrack" / "mlflow-spill").glob("*.jsonl")), "the spill file was not replayed"


def test_server_still_down_at_the_end_spills_then_replays(mlflow_server, experiment, tmp_path, caplog):
    tracker = _tracker(mlflow_server, experiment, tmp_path, finish_timeout_s=1.0)
    recorder = LrRecorder()
    with caplog.at_level(logging.WARNING, logger="sptrack.track"):
        make_trainer([*tracker_callbacks(tracker), recorder, StepHook(3, lambda t: mlflow_server.kill())], max_epochs=2).fit(
            build_module(), make_loader()
        )
    spill = tmp_path / ".sptrack" / "mlflow-spill" / f"{tracker.run_id}.jsonl"
    assert spill.exists()
    assert any("did not come back" in r.getMessage() and str(spill) in r.getMessage() for r in caplog.records)
    mlflow_server.start()
    client = _client(mlflow_server.url)
    assert _only_run(client, experiment).info.status == "RUNNING"

    from sptrack.track.__main__ import main

    assert main(["replay", str(spill)]) == 0
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED"
    _assert_lr_history(client, run.info.run_id, recorder.points)
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == list(range(10))
    assert not spill.exists()


# ---------------------------------------------------------------------------------------- URIs
def test_default_tracking_uri_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = MLflowTracker(system_metrics=False, flush_interval_s=0.2)
    assert tracker.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    recorder = LrRecorder()
    make_trainer([TrackerLogger(tracker), recorder], max_epochs=1).fit(build_module(), make_loader())
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    client = _client(tracker.tracking_uri)
    run = _only_run(client, "sptrack")
    assert run.info.status == "FINISHED"
    _assert_lr_history(client, run.info.run_id, recorder.points)
    assert (tmp_path / "mlartifacts" / "sptrack" / run.info.run_id / "artifacts" / "optim" / "summary.json").is_file()


def test_file_store_uris_are_refused_or_mapped_to_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackerError, match="file store"):
        resolve_tracking_uri("./mlruns")
    with pytest.raises(TrackerError, match="file store"):
        resolve_tracking_uri(f"file://{tmp_path}/mlruns")
    assert resolve_tracking_uri(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri("http://h:5000") == "http://h:5000"
    assert resolve_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, str(tmp_path)) == "http://env:5000"


# ---------------------------------------------------------------------------------------- experiments (SQLite store)
def test_experiments_are_tagged_as_model_training(tmp_path):
    """MLflow 3's UI shows an experiment as model training by its mlflow.experimentKind tag."""
    from sptrack.track.mlflow.runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    assert (EXPERIMENT_KIND_TAG, MODEL_TRAINING) == ("mlflow.experimentKind", "custom_model_development")
    uri = f"sqlite:///{tmp_path}/kinds.db"
    client = _client(uri)
    client.create_experiment("untagged", artifact_location=(tmp_path / "untagged").as_uri())  # made by someone else
    client.create_experiment("genai", artifact_location=(tmp_path / "genai").as_uri(), tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("new", "untagged", "genai"):
        tracker = MLflowTracker(tracking_uri=uri, experiment=name, system_metrics=False, work_dir=str(tmp_path), flush_interval_s=0.1)
        assert tracker.tracking_uri == uri and tracker.experiment_id is None
        run_id = tracker.start()
        experiment = client.get_experiment_by_name(name)
        assert tracker.experiment_id == experiment.experiment_id == client.get_run(run_id).info.experiment_id
        tracker.finish()
    kinds = {name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG) for name in ("new", "untagged", "genai")}
    assert kinds == {"new": MODEL_TRAINING, "untagged": MODEL_TRAINING, "genai": "genai_development"}  # a chosen kind stays
    assert client.get_experiment_by_name("new").artifact_location == (tmp_path / "mlartifacts" / "new").as_uri()
    # Read-only: the CLI prints <ui>/#/experiments/<experiment_id>/runs/<run_id> from them.
    with pytest.raises(AttributeError):
        tracker.experiment_id = "0"
    with pytest.raises(AttributeError):
        tracker.tracking_uri = "sqlite:///elsewhere.db"


def test_a_resumed_run_continues_each_metric_after_its_own_last_step(tmp_path):
    """The resume floors come from the run's latest points (public API), one per metric."""
    from sptrack.track.mlflow.runs import last_steps

    uri = f"sqlite:///{tmp_path}/resume.db"
    options = dict(tracking_uri=uri, experiment="resume", system_metrics=False, work_dir=str(tmp_path), flush_interval_s=0.1)
    first = MLflowTracker(**options)
    run_id = first.start()
    first.log_metrics({"a": 1.0, "b": 1.0}, step=5)
    first.log_metrics({"a": 2.0}, step=9)
    first.log_metrics({"b": 0.5}, step=2)  # an earlier step logged later: b's last step stays 5
    first.finish()
    client = _client(uri)
    assert last_steps(client, client.get_run(run_id)) == {"a": 9, "b": 5}

    second = MLflowTracker(run_id=run_id, **options)
    assert second.start() == run_id and second.resumed and second.experiment_id == first.experiment_id
    second.log_metrics({"a": 3.0, "b": 3.0}, step=5)  # a: already there; b: at its last step, dropped
    second.log_metrics({"a": 4.0, "b": 4.0}, step=10)
    second.finish()
    assert _history(client, run_id, "a") == [(5, 1.0), (9, 2.0), (10, 4.0)]
    assert _history(client, run_id, "b") == [(2, 0.5), (5, 1.0), (10, 4.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
