"""``ExactResume``: the parts of a run's future that Lightning does not checkpoint.

Lightning saves weights, optimizer, scheduler and loop progress. What else decides the batches a
resumed run trains on is saved here: every rank's global random generators (python, numpy, torch
CPU and CUDA: augmentations drawn on the device use them), and where the training data order
stands (the epoch and the number of batches already trained in it), which a
:class:`~sptrack.data.sampler.ResumableSampler` turns back into the same sample order.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from sptrack.data.sampler import ResumableSampler
from sptrack.data.shards import ShardedImages
from sptrack.module.lightning_glue import batches_done_in_epoch
from sptrack.parallel.collectives import gather_objects

CHECKPOINT_KEY = "sptrack_resume"


def rng_state() -> dict:
    """This process's global generator states, in types that ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable_sampler(loader: DataLoader) -> Optional[Union[ResumableSampler, ShardedImages]]:
    """What decides the loader's order and can resume it: its :class:`ResumableSampler` (as ``sampler`` or
    inside its batch sampler), or its dataset when that is a stream that orders itself (:class:`ShardedImages`)."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    dataset = getattr(loader, "dataset", None)
    return dataset if isinstance(dataset, ShardedImages) else None


class ExactResume(pl.Callback):
    """Checkpoint every rank's RNG and the data position; restore them when a fit resumes.

    ``ExactResume(train_loader)``: ``train_loader`` is the loader given to ``fit``. When its order
    comes from a :class:`ResumableSampler` (the loaders of ``sptrack.data.recipe_loaders``), a
    resumed epoch continues that order after the batches already trained; with any other sampler
    only the generators are restored, and a warning says that a mid-epoch resume restarts the
    epoch's order. Put it after the other callbacks:
    it restores the generators at train start, after every other callback's ``on_train_start``.

    Saving is a collective (the ranks' generator states are gathered), as Lightning calls
    ``on_save_checkpoint`` on every rank. A resume on another world size keeps the data position
    but not the generators (a warning says so): the ranks' streams cannot be mapped.
    """

    def __init__(self, train_loader: DataLoader):
        self.sampler = resumable_sampler(train_loader)
        # A stream batches itself (its loader's batch_size is None).
        self.batch_size = int(train_loader.batch_size or getattr(train_loader.dataset, "batch_size", None) or 1)
        self._rng_to_restore: Optional[dict] = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """``checkpoint["sptrack_resume"] = {"rng": [per rank], "epoch", "batches_done", "sampler"}``."""
        done = batches_done_in_epoch(trainer)
        epoch = int(trainer.current_epoch)
        if done >= trainer.num_training_batches:  # saved at the end of the epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "rng": gather_objects(rng_state()),
            "epoch": epoch,
            "batches_done": done,
            "batch_size": self.batch_size,
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Set the sampler's next epoch and skip now (before the loader starts); keep this rank's RNG for train start."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            warnings.warn("the checkpoint has no sptrack_resume state: data order and RNG restart, the run is not exact.",
                          UserWarning, stacklevel=2)
            return
        if int(state["batch_size"]) != self.batch_size:
            warnings.warn(f"the checkpoint was trained with batch size {state['batch_size']}, this run uses {self.batch_size}: "
                          "the resumed epoch skips the same number of samples, not of batches.", UserWarning, stacklevel=2)
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
            self.sampler.resume(state["epoch"], state["batches_done"] * int(state["batch_size"]))
        elif state["batches_done"]:
            warnings.warn("the training loader has no sptrack.data.ResumableSampler: the resumed epoch starts its "
                          "sample order again, so the run is not exact.", UserWarning, stacklevel=2)
        ranks = state["rng"]
        if len(ranks) == trainer.world_size:
            self._rng_to_restore = ranks[trainer.global_rank]
        else:
            warnings.warn(f"the checkpoint holds the generators of {len(ranks)} ranks and this run has {trainer.world_size}: "
                          "random draws after the resume differ from the uninterrupted run.", UserWarning, stacklevel=2)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the loader kept its sampler, then put this rank's generators back."""
        loader = trainer.train_dataloader
        if loader is not None and self.sampler is not None and resumable_sampler(loader) is not self.sampler:
            raise RuntimeError("ExactResume: the training loader's sampler is not the one it was given "
                               "(was the DataLoader re-created?); an exact resume is impossible.")
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
