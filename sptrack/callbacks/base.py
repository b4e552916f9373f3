"""Shared plumbing of the evaluation callbacks: key look-up with clear errors, naming, logging."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import lightning.pytorch as pl
import torch

from sptrack.callbacks.distributed import reduce_sum
from sptrack.errors import ConfigError

#: Metric prefix per evaluation stage.
STAGE_PREFIX = {"validate": "eval", "test": "test"}


class EvalCallback(pl.Callback):
    """Base of the evaluation callbacks: a unique ``name``, the keys they read, and helpers.

    Values are looked up first in the dict returned by the Module's forward (``outputs`` of the
    batch-end hooks), then in the batch itself, so recipes may leave labels in the batch.
    """

    def __init__(self, name: str, embedding_key: str = "embedding", label_key: Optional[str] = "label"):
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"callbacks.{name}.name", f"must be a non-empty string without '/', got {name!r}.")
        self.name = name
        self.embedding_key = embedding_key
        self.label_key = label_key

    @property
    def state_key(self) -> str:
        """Unique per name, so several instances of one class can coexist in a Trainer."""
        return self._generate_state_key(name=self.name)

    def check_unique_name(self, trainer: "pl.Trainer") -> None:
        """ConfigError if another evaluation callback of this Trainer uses the same name (its metrics would collide)."""
        same = [cb for cb in trainer.callbacks if isinstance(cb, EvalCallback) and cb.name == self.name]
        if len(same) > 1:
            kinds = ", ".join(type(cb).__name__ for cb in same)
            raise ConfigError(f"callbacks.{self.name}.name", f"is used by {len(same)} callbacks ({kinds}).", "Give each callback its own name=.")

    def fetch(self, outputs: Any, batch: Any, key: str, which: str, stage: str) -> torch.Tensor:
        """``outputs[key]``, else ``batch[key]``; a ConfigError naming the key when neither has it."""
        for source in (outputs, batch):
            if isinstance(source, Mapping) and key in source and source[key] is not None:
                return source[key]
        out_keys = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        batch_keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ConfigError(
            f"callbacks.{self.name}.{which}",
            f"forward(batch, stage={stage!r}) returned no {key!r} entry and the batch has none "
            f"(forward returned {out_keys}; batch keys {batch_keys}).",
            f"Return {key!r} from forward in stage {stage!r}, or point {which}= at an existing key.",
        )

    def embeddings(self, outputs: Any, batch: Any, stage: str, dim: Optional[int] = None) -> torch.Tensor:
        """Detached ``(B, D)`` embeddings of this batch (never part of the encoder's graph)."""
        emb = self.fetch(outputs, batch, self.embedding_key, "embedding_key", stage)
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or (dim is not None and emb.shape[1] != dim):
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            want = f"(B, {dim})" if dim is not None else "(B, D)"
            raise ConfigError(f"callbacks.{self.name}.embedding_key", f"{self.embedding_key!r} must be a {want} tensor, got {shape}.")
        return emb.detach()

    def labels(self, outputs: Any, batch: Any, stage: str, batch_size: int) -> torch.Tensor:
        """Integer class labels ``(B,)``; negative values mark unlabelled samples."""
        labels = self.fetch(outputs, batch, self.label_key, "label_key", stage)
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
            kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ConfigError(f"callbacks.{self.name}.label_key", f"{self.label_key!r} must hold integer class indices, got {kind}.")
        labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
        if labels.shape != (batch_size,):
            raise ConfigError(f"callbacks.{self.name}.label_key", f"{self.label_key!r} must have shape ({batch_size},), got {tuple(labels.shape)}.")
        return labels.long()

    def log_global(self, module: "pl.LightningModule", key: str, value: torch.Tensor) -> None:
        """Log a value that is already identical on every rank.

        ``sync_dist=True`` averages identical numbers (a no-op on the value) and keeps every rank
        holding the metric, so ModelCheckpoint/EarlyStopping can monitor it on all ranks.
        """
        module.log(key, value.float(), sync_dist=True, on_step=False, on_epoch=True)


def accuracy_from_counts(trainer: "pl.Trainer", correct: torch.Tensor, total: torch.Tensor) -> Optional[torch.Tensor]:
    """Global accuracy from per-rank counts (a collective); None when no rank saw a labelled sample."""
    counts = reduce_sum(trainer, torch.stack([correct.double(), total.double()]))
    if counts[1].item() == 0:
        return None
    return counts[0] / counts[1]
