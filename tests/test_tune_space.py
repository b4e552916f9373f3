"""Sweep input checks: the search space and the sweep options fail before any trial, naming the key."""

from __future__ import annotations

import math

import optuna
import pytest

from sptrack.errors import ConfigError
from sptrack.recipe.loading import load_recipe
from sptrack.run.cli import main
from sptrack.track.redact import redact_value
from sptrack.tune.options import SweepOptions
from sptrack.tune.space import SearchSpace
from sptrack.tune.storage import resolve_storage


@pytest.fixture(scope="module")
def dino_cfg():
    return load_recipe("recipes/dino.py").default_config()


def _space(cfg, space):
    return SearchSpace.from_config(cfg, space)


def test_default_space_expands_per_optimizer_around_the_recipe_values(dino_cfg):
    space = SearchSpace.from_config(dino_cfg)
    ranges = {p.key: p for p in space.params}
    assert set(ranges) == {"optim.backbone.lr", "optim.head.lr", "optim.backbone.frequency", "optim.head.frequency"}
    lr, base = ranges["optim.backbone.lr"], dino_cfg.optim["backbone"].lr
    assert lr.kind == "log-uniform" and math.isclose(lr.low, base / 10) and math.isclose(lr.high, base * 10)
    assert ranges["optim.head.frequency"].choices == (1, 2)

    # Sampled values are inside the ranges and land, typed, in a copy of the config.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = space.sample(study.ask())
        assert all(ranges[k].contains(v) for k, v in params.items())
        cfg = SearchSpace.apply(dino_cfg, params)
        assert cfg.optim["head"].lr == params["optim.head.lr"] and cfg.optim["head"].frequency == params["optim.head.frequency"]
    assert dino_cfg.optim["head"].lr == load_recipe("recipes/dino.py").default_config().optim["head"].lr  # the base config is untouched


def test_any_dotted_key_can_be_searched(dino_cfg):
    space = _space(dino_cfg, {"dino.student_temp": "uniform 0.05..0.2", "model.depth": "int 1..3", "probe_lr": "log-uniform 1e-4..1e-2"})
    assert [(p.key, p.kind, p.low, p.high) for p in space.params] == [
        ("dino.student_temp", "uniform", 0.05, 0.2), ("model.depth", "int", 1, 3), ("probe_lr", "log-uniform", 1e-4, 1e-2)]


@pytest.mark.parametrize(
    "space, key, words",
    [
        ({"optim.*.lrr": "log-uniform 1e-4..1e-2"}, "search_space['optim.*.lrr']", ["matches no configuration key", "optim.backbone.lr"]),
        ({"optim.*.lr": "log-uniform 0..1e-2"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["LOW > 0"]),
        ({"optim.*.lr": "uniform -1e-3..1e-2"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["lr must be a finite number > 0", "-0.001"]),
        ({"optim.*.frequency": [0, 1]}, "search_space['optim.*.frequency'] (optim.backbone.frequency)", ["integer >= 1", "0"]),
        ({"optim.*.frequency": "int 0..3"}, "search_space['optim.*.frequency'] (optim.backbone.frequency)", ["integer >= 1"]),
        ({"optim.*.lr": "log-uniform 1e-2..1e-4"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["LOW < HIGH"]),
        ({"optim.*.lr": "log-unifrom 1e-4..1e-2"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["unknown range kind", "log-uniform"]),
        ({"optim.*.lr": "log-uniform 1e-4..__import__('os')"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["is not a number"]),
        ({"optim.*.lr": "between 1 and 2"}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["is not 'KIND LOW..HIGH'"]),
        ({"optim.*.lr": []}, "search_space['optim.*.lr'] (optim.backbone.lr)", ["empty list"]),
        ({"optim.*.weight_decay": "uniform -0.1..0.1"}, "search_space['optim.*.weight_decay'] (optim.backbone.weight_decay)", [">= 0"]),
        ({"optim.*.momentum": "uniform 0.5..x2"}, "search_space['optim.*.momentum'] (optim.backbone.momentum)", ["relative bound", "None"]),
        ({"model.depth": "uniform 1..3"}, "search_space (model.depth)", ["expected int"]),
        ({"optim.*.betas": [(0.9, 0.99)]}, "search_space['optim.*.betas'] (optim.backbone.betas)", ["not a number, string, bool or None"]),
        ({}, "search_space", ["non-empty dict"]),
    ],
)
def test_bad_search_space_is_one_error_naming_the_key(dino_cfg, space, key, words):
    with pytest.raises(ConfigError) as err:
        _space(dino_cfg, space)
    assert err.value.key == key
    for word in words:
        assert word in str(err.value)


def test_a_value_the_optimizer_rejects_is_caught_before_any_trial(dino_cfg):
    # SGD refuses a negative momentum in its constructor; the space is checked with the real class.
    cfg = SearchSpace.apply(dino_cfg, {})
    cfg.optim["backbone"].type = "SGD"
    cfg.optim["backbone"].momentum = 0.9
    with pytest.raises(ConfigError) as err:
        _space(cfg, {"optim.backbone.momentum": "uniform x-1..x1"})
    assert "momentum" in str(err.value)


@pytest.mark.parametrize(
    "options, key, words",
    [
        (dict(trials=0), "--trials", ["integer >= 1"]),
        (dict(workers=0), "--workers", ["integer >= 1"]),
        (dict(sampler="tpee"), "--sampler", ["'tpe'"]),
        (dict(pruner="medain"), "--pruner", ["'median'"]),
        (dict(direction="maximize"), "--direction", ["'max'"]),
        (dict(prune_every=0), "--prune-every", ["integer >= 1"]),
        (dict(objective="eval knn"), "--objective", ["metric name"]),
        (dict(study="a/b"), "--study", ["plain name"]),
    ],
)
def test_bad_sweep_options_name_the_flag(options, key, words):
    with pytest.raises(ConfigError) as err:
        SweepOptions(**options).validate()
    assert err.value.key == key
    for word in words:
        assert word in str(err.value)


def test_storage_urls(tmp_path):
    assert resolve_storage(None, str(tmp_path)).url == f"sqlite:///{tmp_path}/optuna.db"
    assert resolve_storage(str(tmp_path / "s.db"), ".").url == f"sqlite:///{tmp_path}/s.db"
    journal = resolve_storage(f"journal:{tmp_path}/j.log", ".")
    assert (journal.kind, journal.path, journal.heartbeat) == ("journal", f"{tmp_path}/j.log", False)
    assert resolve_storage("postgresql://u@h/db", ".").url == "postgresql://u@h/db"
    # A password (with "@", "/", ":" and "#" in it) stays in the URL Optuna connects with, and is masked wherever it is shown.
    spec = resolve_storage("postgresql://optuna:p@ss/w:0#rd@db.invalid:5432/optuna", ".")
    assert spec.url == "postgresql://optuna:p@ss/w:0#rd@db.invalid:5432/optuna"
    assert redact_value(spec.url) == "postgresql://optuna:***@db.invalid:5432/optuna"
    assert spec.shown_url == "postgresql://optuna:***@db.invalid:5432/optuna"
    assert spec.dashboard_command == "optuna-dashboard postgresql://optuna:***@db.invalid:5432/optuna"
    assert redact_value(resolve_storage("mysql+pymysql://u:s3cr3t@h/db", ".").url) == "mysql+pymysql://u:***@h/db"
    with pytest.raises(ConfigError) as err:
        resolve_storage("sqlit:///x.db", ".")
    assert err.value.key == "--storage" and "'sqlite'" in str(err.value)
    with pytest.raises(ConfigError):
        resolve_storage("sqlite:///:memory:", ".")


def test_cli_rejects_bad_sweep_input_before_training(tmp_path, capsys):
    base = ["recipes/dino.py", f"trainer.output_dir={tmp_path}"]
    assert main([*base, "--trials", "3"]) == 2
    assert "--trials: only applies to sweeps" in capsys.readouterr().err
    assert main([*base, "--sweep", "--sampler", "tpee"]) == 2
    assert "Did you mean 'tpe'" in capsys.readouterr().err
    assert main([*base, 'search_space={"optim.*.lr": "log-uniform 0..1"}', "--sweep"]) == 2
    assert "LOW > 0" in capsys.readouterr().err
    assert main([*base, "--sweep", "--dry-run", "--trials", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "optim.head.lr: log-uniform 0.0004..0.04" in out and "optim.head.frequency: choice [1, 2]" in out
    assert not (tmp_path / "dino").exists()  # nothing created
