"""A real, small synthetic sweep tracked in MLflow (SQLite), built once per test session and shared.

Three trials of ``tests/tune_helpers/tiny_recipe.py`` (two optimizers; the backbone gets a warm-up +
cosine schedule so its ``hparams/lr_backbone`` curve is not flat), random sampler, no pruner:
about 15 s on 2 cores. The folder is keyed on pytest's session temp dir so both dashboard test
files reuse it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = str(ROOT / "tests" / "tune_helpers" / "tiny_recipe.py")
STUDY, EXPERIMENT, TRIALS = "dash", "dash-exp", 3
OPTIMIZERS = ("backbone", "head")


@dataclass
class Sweep:
    """Where the sweep lives: its MLflow store, its Optuna storage and the study/experiment names."""

    folder: Path
    mlflow_uri: str
    storage: str
    study: str = STUDY
    experiment: str = EXPERIMENT
    trials: int = TRIALS


def make_sweep(base: Path) -> Sweep:
    """Run the sweep in ``base/dashboard-sweep`` (once; later calls reuse it)."""
    folder = base / "dashboard-sweep"
    sweep = Sweep(folder, f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/study.db")
    if (folder / "done").exists():
        return sweep
    folder.mkdir(parents=True, exist_ok=True)
    from sptrack.run.cli import main

    cwd = os.getcwd()
    os.chdir(folder)  # MLflow puts a SQLite store's artifacts under ./mlartifacts
    try:
        rc = main([TINY_RECIPE, f"trainer.output_dir={folder}/out", f"tracker.uri={sweep.mlflow_uri}", f"tracker.experiment={EXPERIMENT}",
                   "optim.backbone.scheduler='LinearWarmupCosineAnnealingLR'", "--tracker", "mlflow", "--sweep", "--trials", str(TRIALS),
                   "--storage", sweep.storage, "--study", STUDY, "--sampler", "random", "--pruner", "none"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    (folder / "done").write_text("ok")
    return sweep


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200 (fails with the server's log if it exits or times out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer:\n{log.read_text(errors='replace')[-3000:]}")
