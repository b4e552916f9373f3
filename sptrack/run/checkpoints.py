"""When a CLI run writes checkpoints, how many it keeps, and which one ``--resume auto`` takes.

* at each epoch end (``epoch=E-step=S.ckpt``, the newest ``trainer.keep_checkpoints`` kept);
* while an epoch runs: every ``trainer.checkpoint_every_n_steps`` optimizer boundaries and every
  ``trainer.checkpoint_every_minutes`` (``progress-step=S.ckpt``, only the newest kept);
* on SIGTERM or SIGUSR1 (preemption, SLURM's warning signal): at the next boundary; the job then
  exits with status 128 + signal number once that batch's metrics are logged.

``last.ckpt`` is written by the epoch checkpoints. Mid-epoch checkpoints are taken at accumulation
boundaries only: between two boundaries a rank's gradients are its own (not yet all-reduced).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: Signals that ask for a checkpoint and a clean exit.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ProgressCheckpoint(pl.Callback):
    """Checkpoints inside an epoch, by step count, by wall time and on preemption signals.

    The decision is taken at accumulation boundaries (when ``trainer.global_step`` moves) and is the
    same on every rank: the signal flags and rank 0's clock are combined with one all-reduce of two
    numbers per boundary (none in a single process). Signal handlers only set a flag: collectives
    and file writes happen in the training loop, never inside a handler.
    """

    def __init__(self, every_n_steps: Optional[int] = None, every_minutes: Optional[float] = None):
        self.every_n_steps = every_n_steps
        self.every_s = every_minutes * 60 if every_minutes else None
        self.signal_received: Optional[int] = None
        self.last_path: Optional[str] = None
        self._exit_code: Optional[int] = None
        self._last_step = -1
        self._last_time = time.monotonic()
        self._previous_handlers: dict = {}

    @property
    def state_key(self) -> str:
        return "ProgressCheckpoint"

    def _on_signal(self, signum, frame) -> None:
        self.signal_received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the handlers (after Lightning's own, which would stop at once, without a checkpoint)."""
        self._last_step = trainer.global_step
        self._last_time = time.monotonic()
        for signum in PREEMPTION_SIGNALS:
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: signals stay with whoever has them
                pass

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _decide(self, trainer: pl.Trainer) -> tuple[bool, int]:
        """(time is due on rank 0, a signal on any rank), agreed by every rank."""
        time_due = self.every_s is not None and time.monotonic() - self._last_time >= self.every_s
        signum = self.signal_received or 0
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flags = torch.tensor([float(time_due and trainer.is_global_zero), float(signum)], device=trainer.strategy.root_device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            time_due, signum = bool(flags[0].item()), int(flags[1].item())
        return time_due, signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # inside an accumulation window
            return
        self._last_step = step
        time_due, signum = self._decide(trainer)
        step_due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        if time_due or step_due or signum:
            self._save(trainer, step)
        if signum:
            # Stop once this batch's metrics have reached the loggers (Lightning sends them after this hook).
            self._exit_code = 128 + signum

    def _stop_if_asked(self) -> None:
        if self._exit_code is not None:
            raise SIGTERMException(self._exit_code)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._stop_if_asked()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_asked()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_asked()  # before the epoch checkpoint, which would record a stopped epoch as ended

    def _save(self, trainer: pl.Trainer, step: int) -> None:
        folder = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else Path(trainer.default_root_dir)
        path = str(folder / f"progress-step={step}.ckpt")
        trainer.save_checkpoint(path)
        if self.last_path is not None and self.last_path != path:
            trainer.strategy.remove_checkpoint(self.last_path)
        self.last_path = path
        self._last_time = time.monotonic()


def checkpoint_callbacks(every_n_steps: Optional[int], every_minutes: Optional[float], keep: int) -> list[pl.Callback]:
    """The epoch-end ``ModelCheckpoint`` (``last.ckpt`` + the newest ``keep``) and the :class:`ProgressCheckpoint`.

    The values are checked with the config (:func:`sptrack.recipe.validate.check_trainer`).
    """
    epochs = ModelCheckpoint(save_last=True, monitor="step", mode="max", save_top_k=keep, every_n_epochs=1,
                             save_on_train_epoch_end=True)
    return [epochs, ProgressCheckpoint(every_n_steps, every_minutes)]


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The most recently written checkpoint under ``root/version_*/checkpoints`` (``--resume auto``), or None.

    Each process looks in its own ``root``: Lightning reads the checkpoint on every rank, so on
    several machines the output folder must be shared (or the path given explicitly).
    """
    found = list(root.glob("version_*/checkpoints/*.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
