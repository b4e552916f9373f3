"""One run directory per job, agreed by every rank, holding checkpoints and the run's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl

from sptrack.recipe.paths import first_missing


def next_version_dir(root: Path) -> Path:
    """Create and return ``root/version_N`` for the first free N (and ``root``'s missing parents)."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        candidate = root / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def resumed_version_dir(root: Path, checkpoint: str | Path) -> Path | None:
    """``root/version_N`` when ``checkpoint`` lies in its ``checkpoints`` folder, else None."""
    folder = Path(checkpoint).resolve().parent
    if folder.name == "checkpoints" and folder.parent.parent == root.resolve() and folder.parent.name.startswith("version_"):
        return folder.parent
    return None


class RunDirectory(pl.Callback):
    """Rank 0 creates ``<output_dir>/<recipe>/version_N`` and broadcasts it; checkpoints go below it.

    Broadcasting (rather than every rank computing a name) keeps ranks on other hosts or started
    at other instants in the same directory name. A job resumed from a checkpoint at
    ``root/version_N/checkpoints/...`` continues in ``version_N``.
    """

    def __init__(self, root: str | Path, resume_from: str | Path | None = None):
        self.root = Path(root)
        self.path: Path | None = resumed_version_dir(self.root, resume_from) if resume_from else None
        self._created: Path | None = None  # what rank 0 made for this job, removed again if the job fails holding no file

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Choose the directory once per job and point the checkpoint callback into it."""
        if self.path is None:
            chosen = None
            if trainer.is_global_zero:
                outermost = first_missing(self.root)
                chosen = str(next_version_dir(self.root))
                self._created = outermost or Path(chosen)
            self.path = Path(trainer.strategy.broadcast(chosen, src=0))
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath is None:
            checkpoint.dirpath = str(self.path / "checkpoints")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A job that fails before writing any file (a bad start) leaves no empty run directory behind."""
        created, self._created = self._created, None
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
