"""Flattening, secret redaction, batching rules and the tracker factory (no server, no training)."""

from __future__ import annotations

import collections
import math
from argparse import Namespace
from dataclasses import dataclass

import pytest
import torch

from sptrack.track import (
    MLflowTracker,
    NoTracker,
    TrackerLogger,
    WandbTracker,
    build_tracker,
    flatten,
    prepare_params,
    redact_text,
    tracker_callbacks,
)
from sptrack.track.base import Tracker
from sptrack.track.params import REDACTED, is_secret_key, redact_argv, redact_value, summary_params


def test_flatten_uses_dotted_keys_and_keeps_full_length():
    @dataclass
    class Aug:
        p: float = 0.5

    long_value = "v" * 10_000
    flat = flatten({
        "model": {"dim": 384, "act": None, "heads": {}},
        "betas": (0.9, 0.999),
        "views": [{"size": 224, "aug": Aug()}, {"size": 96}],
        "tags": {"b", "a"},
        "ns": Namespace(x=1),
        "t": torch.tensor(2.5),
        "inf": math.inf,
        "cls": torch.optim.SGD,
        "long": long_value,
    })
    assert flat == {
        "model.dim": 384,
        "model.act": None,
        "model.heads": "{}",
        "betas": "[0.9,0.999]",
        "views.0.size": 224,
        "views.0.aug.p": 0.5,
        "views.1.size": 96,
        "tags": '["a","b"]',
        "ns.x": 1,
        "t": 2.5,
        "inf": "inf",
        "cls": "torch.optim.sgd.SGD",
        "long": long_value,
    }
    assert flatten(flat) == flat  # idempotent on flat dicts


@pytest.mark.parametrize(
    "key",
    ["api_key", "WANDB_API_KEY", "apiKey", "hf_token", "token", "access-token", "password", "db.password",
     "client_secret", "secret", "credentials", "private_key", "MLFLOW_TRACKING_TOKEN", "passwd"],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["num_tokens", "max_tokens", "tokenizer", "token_dim", "password_length", "secretary", "key", "keys"])
def test_not_secret_keys(key):
    assert not is_secret_key(key)


def test_prepare_params_masks_secret_strings_anywhere_in_the_path():
    params = prepare_params({
        "wandb": {"api_key": "abc123", "project": "p"},
        "credentials": {"user": "bob"},
        "model": {"num_tokens": 196, "token": 5},
        "db": "postgresql://bob:s3c@r/t@db.invalid:5432/runs",
        "hook": "https://h.invalid/x?token=abc&page=2",
        "empty_password": "",
    })
    assert params == {
        "wandb.api_key": REDACTED,
        "wandb.project": "p",
        "credentials": REDACTED,  # a secret key's mapping is masked whole
        "model.num_tokens": 196,
        "model.token": 5,  # numbers are not credentials
        "db": "postgresql://bob:***@db.invalid:5432/runs",
        "hook": "https://h.invalid/x?token=***&page=2",
        "empty_password": "",
    }


def test_redact_value_leaves_plain_values_alone():
    for value in ("https://example.invalid/a:b", "user@example.invalid", "a: b", 3, None, "sgd"):
        assert redact_value(value) == value
    assert redact_value("Authorization: Bearer abcdefghijklmnopqrstuvwxyz") == "Authorization: Bearer ***"


def test_redact_text_keeps_layout_and_comments():
    text = (
        "# recipe\n"
        "wandb:\n"
        "  api_key: abcdef   # from the web UI\n"
        "  project: ssl\n"
        "tokens: 196\n"
        "db_password = \"hunter2\"\n"
        "{\"hf_token\": \"hf_abc\", \"lr\": 0.1}\n"
        "  - password: 'pw'\n"
        "uri: https://bob:pw2@mlflow.invalid\n"
        "storage: postgresql://optuna:p@ss/w:0#rd@db.invalid:5432/optuna  # the sweep database\n"
        "token:\n"
    )
    assert redact_text(text) == (
        "# recipe\n"
        "wandb:\n"
        "  api_key: ***   # from the web UI\n"
        "  project: ssl\n"
        "tokens: 196\n"
        "db_password = \"***\"\n"
        "{\"hf_token\": \"***\", \"lr\": 0.1}\n"  # one-line JSON objects too
        "  - password: '***'\n"
        "uri: https://bob:***@mlflow.invalid\n"
        "storage: postgresql://optuna:***@db.invalid:5432/optuna  # the sweep database\n"
        "token:\n"
    )
    assert redact_text('{\n  "hf_token": "hf_abc",\n  "lr": 0.1\n}\n') == '{\n  "hf_token": "***",\n  "lr": 0.1\n}\n'


def test_redact_argv():
    argv = ["run.py", "--api-key", "abc", "--token=xyz", "wandb.api_key=k", "--uri", "http://u:p@h.invalid", "--lr", "0.1",
            "--storage", "mysql://u:p@s/s@db.invalid/optuna"]
    assert redact_argv(argv) == [
        "run.py", "--api-key", REDACTED, f"--token={REDACTED}", f"wandb.api_key={REDACTED}", "--uri",
        "http://u:***@h.invalid", "--lr", "0.1", "--storage", "mysql://u:***@db.invalid/optuna",
    ]


def test_summary_params_use_the_config_scheme_and_leave_out_what_the_config_holds():
    rows = [
        {"index": 0, "name": "backbone", "class": "LARS", "lr": 0.3, "weight_decay": 0.0, "matched_modules": ["backbone", "neck"],
         "scheduler": None},
        {"index": 1, "name": "head", "class": "AdamW", "lr": 1e-3, "weight_decay": 0.05, "matched_modules": ["head"],
         "scheduler": "LinearLR"},
    ]
    assert summary_params(rows) == {
        "optim.backbone.index": 0, "optim.backbone.class": "LARS", "optim.backbone.lr": 0.3, "optim.backbone.weight_decay": 0.0,
        "optim.backbone.matched_modules": '["backbone","neck"]', "optim.backbone.scheduler": None,
        "optim.head.index": 1, "optim.head.class": "AdamW", "optim.head.lr": 1e-3, "optim.head.weight_decay": 0.05,
        "optim.head.matched_modules": '["head"]', "optim.head.scheduler": "LinearLR",
    }
    # What the flattened config holds keeps its one name: the recipe form (optim.<name>.<field>) and the
    # optimizer's own arguments in Module(optim=...)'s form (optim.<name>.optimizer.lr).
    config = flatten({"optim": {
        "backbone": {"modules": "backbone", "type": "LARS", "lr": 0.3, "scheduler": None},
        "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.05}},
    }})
    assert summary_params(rows, config_keys=config) == {
        "optim.backbone.index": 0, "optim.backbone.class": "LARS", "optim.backbone.weight_decay": 0.0,
        "optim.backbone.matched_modules": '["backbone","neck"]', "optim.head.index": 1, "optim.head.class": "AdamW", "optim.head.matched_modules": '["head"]',
        "optim.head.scheduler": "LinearLR",
    }
    # The single-optimizer form: optim.optimizer.lr / optim.frequency belong to the optimizer named "default".
    single = [{"index": 0, "name": "default", "class": "SGD", "lr": 0.1, "frequency": 1, "num_params": 7}]
    assert summary_params(single, config_keys=flatten({"optim": {"optimizer": {"type": "SGD", "lr": 0.1}, "frequency": 1}})) == {
        "optim.default.index": 0, "optim.default.class": "SGD", "optim.default.num_params": 7,
    }


def test_mlflow_batches_respect_the_limits():
    from sptrack.track.mlflow.records import take_chunk

    ops = collections.deque({"t": "m", "k": "a", "v": 1.0, "ts": 0, "s": i} for i in range(2500))
    ops.extend({"t": "p", "k": f"p{i}", "v": "x"} for i in range(150))
    ops.append({"t": "p", "k": "p149", "v": "again"})  # one value per key per request
    ops.append({"t": "text", "f": "a.txt", "c": "hi"})
    ops.append({"t": "m", "k": "b", "v": 1.0, "ts": 0, "s": 0})
    sizes = []
    while ops:
        chunk = take_chunk(ops)
        sizes.append((chunk[0]["t"], len(chunk)))
    # 2500 metrics -> 1000 + 1000 + (500 metrics + 100 params: 1000 entities at most, 100 params at most)
    assert sizes == [("m", 1000), ("m", 1000), ("m", 600), ("p", 50), ("p", 1), ("text", 1), ("m", 1)]


class _Recording(Tracker):
    kind = "recording"

    def __init__(self):
        super().__init__()
        self.points = []

    def start(self, run_id=None):
        self.active = True
        return "r"

    def finish(self, status="FINISHED"):
        self.active = False

    def log_params(self, params):
        pass

    def _log_metrics(self, metrics, step):
        self.points.extend((step, k, v) for k, v in metrics.items())

    def log_table(self, name, columns, rows):
        pass

    def log_text(self, text, artifact_file):
        pass

    def log_artifact(self, local_path, artifact_path=None):
        pass


def test_resumed_runs_drop_points_at_or_below_their_last_step():
    tracker = _Recording()
    tracker._step_floor = {"loss": 7}
    tracker.log_metrics({"loss": 1.0, "lr": 0.1}, step=7)
    tracker.log_metrics({"loss": torch.tensor(2.0), "text": "n/a"}, step=8)
    assert tracker.points == [(7, "lr", 0.1), (8, "loss", 2.0)]
    tracker._global_floor = 8
    tracker.log_metrics({"lr": 0.2}, step=8)
    tracker.log_metrics({"lr": 0.3}, step=9)
    assert tracker.points[-1] == (9, "lr", 0.3) and len(tracker.points) == 3


def test_build_tracker_and_callbacks(tmp_path):
    assert isinstance(build_tracker("none"), NoTracker) and isinstance(build_tracker(None), NoTracker)
    assert tracker_callbacks(build_tracker("none")) == []
    mlflow = build_tracker("MLflow", tracking_uri=str(tmp_path / "runs.db"), experiment="e")
    assert isinstance(mlflow, MLflowTracker) and mlflow.tracking_uri == f"sqlite:///{tmp_path}/runs.db"
    wandb = build_tracker("wandb", experiment="proj", dir=str(tmp_path))
    assert isinstance(wandb, WandbTracker) and wandb.project == "proj"
    (callback,) = tracker_callbacks(mlflow, config={"a": 1}, recipe_path="r.yaml")
    assert isinstance(callback, TrackerLogger) and callback.tracker is mlflow and callback.recipe_path == "r.yaml"
    with pytest.raises(ValueError, match="mlflow, wandb, none"):
        build_tracker("tensorboard")
    with pytest.raises(TypeError):
        build_tracker("mlflow", tracking_url="typo")
    # A recipe's tracker section passes through as is: None values dropped, `uri` mapped per tracker.
    section = {"uri": "http://127.0.0.1:5000", "experiment": "dino", "run_name": None}
    assert build_tracker("mlflow", **section).tracking_uri == "http://127.0.0.1:5000"
    assert build_tracker("wandb", **section).settings == {"base_url": "http://127.0.0.1:5000"}
    assert isinstance(build_tracker("none", **section), NoTracker)
