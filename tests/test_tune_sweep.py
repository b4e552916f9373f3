"""Optuna sweeps end to end: real SQLite / journal storages, a real MLflow server, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sptrack.recipe.loading import load_recipe
from sptrack.run.cli import main
from sptrack.tune.space import SearchSpace
from sptrack.tune.tracking import PARENT_ATTR, TAG_PARAM, TAG_STATE, TAG_STUDY, TAG_TRIAL

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(ROOT / "tests" / "tune_helpers" / "tiny_recipe.py")
# DINO on 128 synthetic images, 8 optimizer steps of 16 images: the test_run_cli tiny model, on the ViT (the pruning
# test's lrs were chosen for its dynamics: lr 1e3 turns its loss NaN, lr 10 trails the good trials).
DINO = [
    str(ROOT / "recipes" / "dino.py"), "model.backbone=vit", "data.dataset=synthetic", "data.subset=128", "data.batch_size=16",
    "data.val_batch_size=250",
    "model.cnn_widths=(8, 16)", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=64",
    "model.bottleneck_dim=16", "dino.n_local=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]
WIDE_LR = 'search_space={"optim.*.lr": "log-uniform 1e-5..1e3"}'


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _run(args: list[str], cwd: Path, timeout: int = 240) -> str:
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return proc.stdout


def _load(storage: str, name: str):
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return optuna.load_study(study_name=name, storage=storage)


def _children(client: MlflowClient, experiment: str, parent: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert [r.info.run_id for r in runs if r.data.tags.get("sptrack.role") == "study"] == [parent]
    return [r for r in runs if r.info.run_id != parent]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_six_trial_sweep_one_child_run_per_trial(kind, mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else f"journal:{tmp_path}/study.log"
    experiment = f"sweep-{kind}-{tmp_path.name}"
    def args(trials: int) -> list[str]:
        return [*DINO, f"trainer.output_dir={tmp_path}", f"tracker.uri={mlflow_server.url}", f"tracker.experiment={experiment}", "--tracker", "mlflow",
                "--sweep", "--trials", str(trials), "--storage", storage, "--study", "s6", "--prune-every", "2", "--sampler", "random"]

    assert main(args(6)) == 0
    report = capsys.readouterr().out

    study = _load(storage, "s6")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    # The objective is scored on the 13 validation images carved out of the 128 training ones, the
    # held-out value on the 500 held-out images, after training and apart from the objective.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(abs(t.value * 13 - round(t.value * 13)) < 1e-5 for t in complete)
    assert any(0 < round(t.value * 13) < 13 for t in complete), "a fraction of 13 that is not one of 500"
    assert all(abs(t.user_attrs["heldout_value"] * 500 - round(t.user_attrs["heldout_value"] * 500)) < 1e-4 for t in complete)
    best = study.best_trial
    assert f"best trial {best.number}: eval/knn_acc {best.value:.4g} on the validation images; held-out test/knn_acc " \
           f"{best.user_attrs['heldout_value']:.4g}" in " ".join(report.split())
    space = {p.key: p for p in SearchSpace.from_config(load_recipe("dino").default_config()).params}
    for t in trials:
        assert set(t.params) == set(space) and all(space[k].contains(v) for k, v in t.params.items())

    client = MlflowClient(mlflow_server.url)
    parent = study.user_attrs[PARENT_ATTR]
    children = _children(client, experiment, parent)
    assert len(children) == 6
    by_id = {r.info.run_id: r for r in children}
    assert set(by_id) == {t.user_attrs["run_id"] for t in trials}  # the trial's run id points to its run
    for t in trials:
        tags = by_id[t.user_attrs["run_id"]].data.tags
        assert tags["mlflow.parentRunId"] == parent and tags[TAG_STUDY] == "s6" and tags[TAG_TRIAL] == str(t.number)
        assert tags[TAG_STATE] == t.state.name
        assert {k: float(tags[TAG_PARAM + k]) for k in t.params} == pytest.approx(t.params)
        assert by_id[t.user_attrs["run_id"]].info.status == "FINISHED"
        assert not [k for k in by_id[t.user_attrs["run_id"]].data.metrics if k.startswith("test/")], "held-out values stay out of the runs"
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["sptrack.best_run_id"] == best.user_attrs["run_id"]
    assert parent_run.data.metrics["sweep/best_value"] == pytest.approx(best.value)

    if kind == "sqlite":
        # The same command resumes the study: nothing left to do; one more trial when N grows by one.
        assert main(args(6)) == 0
        assert len(_load(storage, "s6").trials) == 6
        assert main(args(7)) == 0
        assert sorted(t.number for t in _load(storage, "s6").trials) == list(range(7))
        assert len(_children(client, experiment, parent)) == 7


def test_absurd_lr_is_pruned_before_its_last_step_and_nan_fails_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage, mlflow_uri = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    good = {"optim.backbone.lr": 5e-4, "optim.head.lr": 5e-4}
    # lr 1e3 makes DINO's loss NaN at step 4 (first, while the pruner still waits for 3 complete trials);
    # lr 10 trains, but its held-out kNN accuracy trails the good trials' at the first report.
    for params in ({"optim.backbone.lr": 1e3, "optim.head.lr": 1e3}, good, good, good, {"optim.backbone.lr": 10.0, "optim.head.lr": 10.0}, good):
        study.enqueue_trial(params)
    args = [*DINO, WIDE_LR, f"trainer.output_dir={tmp_path}", f"tracker.uri={mlflow_uri}",
            "--tracker", "mlflow", "--sweep", "--trials", "6", "--storage", storage, "--study", "p", "--prune-every", "2", "--prune-startup", "3",
            "--pruner", "median"]
    assert main(args) == 0

    trials = _load(storage, "p").trials
    assert len(trials) == 6
    # Which trial is which comes from its params (enqueued), not from the order the dynamics happen to give.
    (nan,) = [t for t in trials if t.params["optim.backbone.lr"] == 1e3]
    (pruned,) = [t for t in trials if t.params["optim.backbone.lr"] == 10.0]
    rest = [t for t in trials if t.params == good]
    assert len(rest) == 4 and all(t.state == TrialState.COMPLETE for t in rest), [t.state for t in rest]
    assert nan.state == TrialState.FAIL and "not finite" in nan.user_attrs["error"]
    assert pruned.state == TrialState.PRUNED
    last_reported = max(pruned.intermediate_values)
    assert last_reported < 8 and pruned.user_attrs["last_step"] < 8  # stopped before the 8th (last) step
    assert pruned.intermediate_values[last_reported] < rest[0].intermediate_values[last_reported]
    assert all(t.value == pytest.approx(rest[0].value) for t in rest)  # the study went on; same seed and params, same result
    for t in (*rest, pruned):  # every report's signals are stored with the trial
        signals = t.user_attrs["signals"]
        assert sorted(int(s) for s in signals) == sorted(t.intermediate_values)
        assert all(signals[str(s)]["eval/knn_acc"] == v for s, v in t.intermediate_values.items())
        assert all({"eval/probe_acc", "eval/rankme", "train/loss"} <= set(signals[str(s)]) for s in t.intermediate_values)

    client = MlflowClient(mlflow_uri)
    runs = {t.number: client.get_run(t.user_attrs["run_id"]) for t in trials}
    assert runs[pruned.number].data.tags[TAG_STATE] == "PRUNED" and runs[nan.number].data.tags[TAG_STATE] == "FAIL"
    assert runs[nan.number].info.status == "FAILED" and all(runs[t.number].info.status == "FINISHED" for t in rest)


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    out = _run([TINY_RECIPE, f"trainer.output_dir={tmp_path}", "step_sleep_s=0.15", "--sweep", "--trials", "6", "--workers", "2",
                "--storage", storage, "--study", "w"], tmp_path)
    trials = _load(storage, "w").trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    assert out.count("best trials") == 1  # one report, from the launcher


# FSDP2 here (its optimizers hold sharded parameters); a DDP trial under torchrun: tests/test_launch.py.
@pytest.mark.parametrize("strategy, strategy_class", [("fsdp2", "FSDP2Strategy")])
def test_two_process_trial_trains_every_rank_with_the_sampled_params(strategy, strategy_class, tmp_path):
    storage, mlflow_uri, record = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "record"
    _run([TINY_RECIPE, f"trainer.output_dir={tmp_path}", f"record_dir={record}", f"tracker.uri={mlflow_uri}", "--tracker", "mlflow",
          "--sweep", "--trials", "1", "--storage", storage, "--study", "d", "--prune-every", "2", "--devices", "2", "--strategy", strategy], tmp_path)
    (trial,) = _load(storage, "d").trials
    assert trial.state == TrialState.COMPLETE
    ranks = [json.loads((record / f"trial-0-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["strategy"] for r in ranks} == {strategy_class}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    for r in ranks:  # each rank's torch optimizers hold the sampled values
        assert r["lr"]["backbone"] == pytest.approx(trial.params["optim.backbone.lr"]) and r["lr"]["head"] == pytest.approx(trial.params["optim.head.lr"])
        assert r["frequency"] == {"backbone": trial.params["optim.backbone.frequency"], "head": trial.params["optim.head.frequency"]}
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny_recipe").experiment_id])
    children = [r for r in runs if r.data.tags.get("sptrack.role") != "study"]
    assert [r.info.run_id for r in children] == [trial.user_attrs["run_id"]]
    assert children[0].data.params["trainer/world_size"] == "2"


# A worker SIGKILLed mid-trial (its trial failed as stale by the heartbeat and retried once, with the same params):
# tests/test_postgres.py, on the RDB storage that SQLite shares with PostgreSQL, with two concurrent workers beside.


def test_wandb_trials_are_runs_grouped_by_study(tmp_path):
    from track_helpers.wandb_reader import WandbRun

    storage = f"sqlite:///{tmp_path}/study.db"
    env = {**_env(), "WANDB_MODE": "offline"}
    args = [TINY_RECIPE, f"trainer.output_dir={tmp_path}", "--tracker", "wandb", "--sweep", "--trials", "2", "--storage", storage,
            "--study", "wb", "--prune-every", "2", "--pruner", "none"]
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    trials = _load(storage, "wb").trials
    runs = {r.run_id: r for r in (WandbRun(p) for p in sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))}
    assert set(runs) == {t.user_attrs["run_id"] for t in trials}
    for t in trials:
        run = runs[t.user_attrs["run_id"]]
        (group,) = [r.run.run_group for r in run.records if r.WhichOneof("record_type") == "run"]
        assert group == "wb" and run.exit_code == 0
        assert run.config[f"tags/{TAG_TRIAL}"] == str(t.number) and run.config[f"tags/{TAG_STATE}"] == "COMPLETE"
        assert float(run.config[f"tags/{TAG_PARAM}optim.head.lr"]) == pytest.approx(t.params["optim.head.lr"])


def test_sweep_process_group_is_closed_on_every_rank(tmp_path):
    """The group the sweep creates is destroyed before exit (left to static destructors, rank 1 aborted now and then)."""
    from dist.launch import torchrun

    torchrun(ROOT / "tests" / "dist" / "sweep_group_worker.py", str(tmp_path), timeout=120)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    payload = {"number": 3, "params": {"optim.head.lr": 0.01}}
    assert records == [{"rank": r, "payload": payload, "initialized_after_close": False} for r in (0, 1)]


def test_two_commands_starting_a_new_study_at_once_make_one_parent_run(tmp_path):
    """The parent run is made under the study's admission lock: two commands on a new study, started together,
    leave exactly one study run in MLflow, and every trial is its child."""
    storage, mlflow_uri = f"sqlite:///{tmp_path}/study.db", f"sqlite:///{tmp_path}/mlflow.db"
    args = [TINY_RECIPE, f"trainer.output_dir={tmp_path}", "--tracker", "mlflow", f"tracker.uri={mlflow_uri}", "--sweep",
            "--trials", "2", "--storage", storage, "--study", "two", "--pruner", "none"]
    procs = [subprocess.Popen([sys.executable, "-m", "sptrack.run", *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    study = _load(storage, "two")
    client = MlflowClient(mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny_recipe"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r.info.run_id for r in runs if r.data.tags.get("sptrack.role") == "study"]
    assert parents == [study.user_attrs[PARENT_ATTR]]
    assert len(study.trials) == 2
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in runs if r.info.run_id not in parents) == parents * 2
