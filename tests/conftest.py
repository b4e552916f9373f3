"""Shared fixtures: a deterministic dict dataset, small models and a logger that records points."""

from __future__ import annotations

import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("OMP_NUM_THREADS", "1")
# CLI runs track into an embedded MLflow store by default (a few seconds per new store); tests that are
# about tracking say so (--tracker, or no SPTRACK_TRACKER in their environment), the rest track nothing.
os.environ.setdefault("SPTRACK_TRACKER", "none")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*too few.*")


class DictDataset(Dataset):
    """Fixed random regression data returned as dict batches."""

    def __init__(self, n: int = 20, dim: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def mse_forward(self, batch, stage):
    """Regression forward used by most tests: backbone -> head, MSE loss."""
    out = self.head(self.backbone(batch["x"]))
    loss = ((out - batch["y"]) ** 2).mean()
    if stage == "fit":
        self.log("train_loss", loss, batch_size=len(out))
    else:
        self.log("val_loss", loss, batch_size=len(out))
    return {"loss": loss, "embedding": out}


def make_nets(seed: int = 0):
    """Backbone and head with deterministic initial weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)), nn.Linear(8, 1)


def loader(n: int = 20, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """A non-shuffled loader over :class:`DictDataset`."""
    return DataLoader(DictDataset(n, seed=seed), batch_size=batch_size, shuffle=False)


def trainer(**kwargs) -> pl.Trainer:
    """A quiet CPU ``sptrack.Trainer``; keyword arguments override the defaults."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    import sptrack

    return sptrack.Trainer(**defaults)


class RecordingLogger(Logger):
    """A real Lightning logger that keeps every (step, name, value) it receives."""

    def __init__(self):
        super().__init__()
        self.points: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        for k, v in metrics.items():
            self.points.append((step, k, float(v)))

    def series(self, key: str) -> list[tuple[int, float]]:
        """All (step, value) points logged under ``key``."""
        return [(s, v) for s, k, v in self.points if k == key]


@pytest.fixture
def recording_logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One real ``mlflow server`` (SQLite backend, 127.0.0.1) per test module; killed by PID at the end."""
    from track_helpers.mlflow_server import MlflowServer

    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()
