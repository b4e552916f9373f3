"""W&B tracking, offline: the run's ``.wandb`` file is read back with a small reader of its record format.

No API key is configured here (``HOME`` is a temporary folder without a netrc), so the tracker
chooses offline mode by itself, as it does for users without a W&B login.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from sptrack.track import tracker_callbacks
from sptrack.track.wandb_tracker import STEP_KEY, WandbTracker, has_wandb_credentials, resolve_mode
from track_helpers.common import (
    BACKBONE_CLIP,
    CONFIG,
    SECRETS,
    TRAINER_CLIP,
    LrRecorder,
    StepHook,
    build_module,
    make_loader,
    make_trainer,
    num_params,
)
from track_helpers.wandb_reader import WandbRun


@pytest.fixture(autouse=True)
def no_wandb_login(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def _run_files(root: Path, run_id: str) -> list[Path]:
    # W&B appends -1, -2 ... to a run folder whose name (second-resolution start time + id) is taken.
    return sorted(root.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))


def _only_run(root: Path, run_id: str) -> WandbRun:
    files = _run_files(root, run_id)
    assert len(files) == 1, files
    return WandbRun(files[0])


def _steps(run: WandbRun, key: str) -> list[int]:
    return [s for s, _ in run.series(key)]


def test_offline_run_file_holds_config_table_and_lr_history(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("tracking:\n  api_key: sk-live-0123456789abcdef\n  url: https://alice:hunter2@example.invalid/x\n")
    tracker = WandbTracker(project="sptrack-tests", dir=str(tmp_path / "out"))
    assert resolve_mode() == "offline" and not has_wandb_credentials()
    recorder = LrRecorder()
    module = build_module()
    trainer = make_trainer([*tracker_callbacks(tracker, config=CONFIG, recipe_path=str(recipe)), recorder], max_epochs=2)
    trainer.fit(module, make_loader(), make_loader(seed=1))
    assert tracker.mode_used == "offline" and not tracker.active

    run = _only_run(tmp_path / "out", tracker.run_id)
    assert run.run_id == tracker.run_id
    # Config: dotted keys, secrets masked, and what the config lacks of the optimizer summary as optim.<name>.<field>.
    config = run.config
    assert config["model.hidden"] == 16 and config["optim.head.optimizer.weight_decay"] == 0.05
    assert config["data.augment"] == '["flip","crop"]'
    assert config["tracking.api_key"] == "***" and config["tracking.url"] == "https://alice:***@example.invalid/mlflow"
    assert config["trainer/world_size"] == 1
    expected = {
        "backbone": {"index": 0, "class": "SGD", "lr": 0.1, "weight_decay": 0.0, "modules": "backbone",
                     "matched_modules": '["backbone"]', "num_params": num_params(module.backbone), "frequency": 1,
                     "scheduler": "CosineAnnealingLR", "interval": "step", "monitor": None,
                     "gradient_clip_val": BACKBONE_CLIP, "gradient_clip_algorithm": "norm"},
        "head": {"index": 1, "class": "AdamW", "lr": 0.01, "weight_decay": 0.05, "modules": "head",
                 "matched_modules": '["head"]', "num_params": num_params(module.head), "frequency": 2,
                 "scheduler": "CosineAnnealingLR", "interval": "step", "monitor": None,
                 "gradient_clip_val": TRAINER_CLIP, "gradient_clip_algorithm": "value"},
    }
    assert not [k for k in config if k.startswith("optim/")]
    for name, fields in expected.items():
        logged = {}
        for f in fields:  # each setting under one name: the config's (optim.<name>[.optimizer].<field>) or the summary's
            keys = [k for k in (f"optim.{name}.{f}", f"optim.{name}.optimizer.{f}") if k in config]
            assert len(keys) == 1, (name, f, keys)
            logged[f] = config[keys[0]]
        assert logged == fields, name
    assert config["optim.head.class"] == "AdamW" and "optim.head.lr" not in config  # lr: the config's optim.head.optimizer.lr

    # hparams/lr_<name>: the optimizers' own lrs at their steps, on the trainer/global_step axis.
    for name in ("backbone", "head"):
        assert run.series(f"hparams/lr_{name}") == recorder.points[name], name
    assert _steps(run, "hparams/lr_head") == [1, 3, 5, 7, 9]
    assert _steps(run, "train_loss") == list(range(10))
    assert _steps(run, "val_loss") == [4, 9]
    assert any(d.glob_name == "*" and d.step_metric == STEP_KEY for d in run.metric_definitions)
    w_steps = [row["_step"] for row in run.history]
    assert w_steps == sorted(set(w_steps))  # one W&B row per step, none dropped

    # The summary table: a wandb.Table in the history, its JSON in the run's files.
    tables = [row["optim/summary"] for row in run.history if "optim/summary" in row]
    assert len(tables) == 1 and tables[0]["_type"] == "table-file" and tables[0]["nrows"] == 2
    table = json.loads((run.files_dir / tables[0]["path"]).read_text())
    rows = {r[table["columns"].index("name")]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert rows["backbone"]["num_params"] == num_params(module.backbone) and rows["head"]["frequency"] == 2
    assert rows["head"]["gradient_clip_algorithm"] == "value" and rows["backbone"]["lr"] == 0.1

    # Recipe, resolved config and environment are run files; no secret anywhere in the run.
    assert {"recipe/recipe.yaml", "config/resolved.json", "environment.json"} <= set(run.files)
    assert "api_key: ***" in (run.files_dir / "recipe" / "recipe.yaml").read_text()
    env = json.loads((run.files_dir / "environment.json").read_text())
    assert env["key_packages"]["wandb"]
    everything = b"".join(p.read_bytes() for p in run.path.parent.rglob("*") if p.is_file())
    assert not any(secret.encode() in everything for secret in SECRETS)
    assert run.exit_code == 0 and run.summary["sptrack/status"] == "FINISHED"


def test_resumed_run_keeps_its_id_and_continues_its_steps(tmp_path):
    out, ckpt_dir = tmp_path / "out", tmp_path / "ckpt"
    first, rec1 = WandbTracker(project="sptrack-tests", dir=str(out)), LrRecorder()
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    make_trainer([*tracker_callbacks(first), rec1, checkpoints], max_epochs=2, enable_checkpointing=True).fit(build_module(), make_loader())
    epoch0 = sorted(ckpt_dir.glob("epoch=0*.ckpt"))
    assert len(epoch0) == 1

    second, rec2 = WandbTracker(project="sptrack-tests", dir=str(out)), LrRecorder()
    make_trainer([*tracker_callbacks(second), rec2], max_epochs=3).fit(build_module(), make_loader(), ckpt_path=str(epoch0[0]))
    assert second.run_id == first.run_id and second.resumed

    files = _run_files(out, first.run_id)
    assert len(files) == 2  # offline: one file per process, synced into one run by `wandb sync`
    runs = sorted((WandbRun(f) for f in files), key=lambda r: min(row["_timestamp"] for row in r.history))
    assert {r.run_id for r in runs} == {first.run_id}
    # The second segment starts after the last step of the first (5..9 were already there).
    assert _steps(runs[0], "hparams/lr_backbone") == list(range(10))
    assert _steps(runs[1], "hparams/lr_backbone") == [10, 11, 12, 13, 14]
    assert runs[1].series("hparams/lr_backbone") == [p for p in rec2.points["backbone"] if p[0] >= 10]
    assert runs[1].series("hparams/lr_head") == [p for p in rec2.points["head"] if p[0] >= 10]
    assert _steps(runs[1], "train_loss") == [10, 11, 12, 13, 14]
    assert min(row["_step"] for row in runs[1].history) > max(row["_step"] for row in runs[0].history)
    assert [r.exit_code for r in runs] == [0, 0]


@pytest.mark.parametrize("how, status, code", [("error", "FAILED", 1), ("ctrl-c", "KILLED", 130)])
def test_failed_and_interrupted_runs_report_their_status(tmp_path, how, status, code):
    def interrupt(trainer):
        raise KeyboardInterrupt

    tracker, recorder = WandbTracker(project="sptrack-tests", dir=str(tmp_path)), LrRecorder()
    if how == "error":
        callbacks, module, expected = [], build_module(fail_at_batch=3), (RuntimeError,)
    else:
        callbacks, module, expected = [StepHook(3, interrupt)], build_module(), (SystemExit,)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(expected):
            make_trainer([*tracker_callbacks(tracker), recorder, *callbacks]).fit(module, make_loader())
    finally:
        signal.signal(signal.SIGINT, handler)
    run = _only_run(tmp_path, tracker.run_id)
    assert run.exit_code == code and run.summary["sptrack/status"] == status
    assert run.series("hparams/lr_backbone") == recorder.points["backbone"] and _steps(run, "hparams/lr_backbone") == [0, 1, 2]


def test_mode_is_online_only_with_credentials(tmp_path, monkeypatch):
    assert resolve_mode() == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    import wandb

    host = __import__("urllib.parse").parse.urlparse(wandb.Settings().base_url).hostname
    netrc = Path(tmp_path / "home" / ".netrc")
    netrc.write_text(f"machine {host}\n  login user\n  password {'y' * 40}\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials() and resolve_mode() == "online"
