"""Online weighted k-nearest-neighbour accuracy against a bank of recent training embeddings."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from sptrack.callbacks.base import STAGE_PREFIX, EvalCallback, accuracy_from_counts
from sptrack.callbacks.distributed import gather_equal
from sptrack.errors import ConfigError


@torch.no_grad()
def knn_predict(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN class predictions (Wu et al. 2018; the DINO evaluation).

    Cosine similarities to the ``k`` nearest bank entries vote for their labels with weight
    ``exp(sim / temperature)``; the class with the largest total wins.

    Args:
        queries: ``(B, D)`` query embeddings (normalised here).
        bank: ``(M, D)`` reference embeddings (normalised here).
        bank_labels: ``(M,)`` integer labels in ``[0, num_classes)``.
        num_classes, k, temperature: as above; ``k`` is capped at ``M``.

    Returns:
        ``(B,)`` predicted labels.
    """
    queries = F.normalize(queries.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    sims = queries @ bank.T  # (B, M)
    top_sims, top_idx = sims.topk(min(k, bank.shape[0]), dim=1)
    weights = (top_sims / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=weights.dtype)
    votes.scatter_add_(1, bank_labels[top_idx], weights)
    return votes.argmax(dim=1)


class OnlineKNN(EvalCallback):
    """kNN accuracy of held-out embeddings against the latest training embeddings (no training involved).

    After every training batch the (L2-normalised, detached, fp32) embeddings and labels of that
    batch enter a ring buffer of the most recent samples. At the start of each validation (or
    test) epoch the buffers of all ranks are gathered, so every rank votes against the same global
    bank of about ``bank_size`` samples (``ceil(bank_size / world_size)`` per rank); the counts of
    correct predictions are summed over ranks and ``eval/{name}_acc`` is logged (``test/...`` in
    ``trainer.test``). Unlabelled samples (label < 0) are neither stored nor scored. The bank is
    not checkpointed: after a resume it refills from the next training batches.

    Args:
        name: metric stem.
        k, temperature: kNN parameters (DINO uses k=20, T=0.07).
        embedding_key, label_key: keys of the forward's output dict (or the batch).
        bank_size: number of recent training samples kept (globally).
        num_classes: default: 1 + the largest label in the bank.
    """

    def __init__(
        self,
        name: str = "knn",
        k: int = 20,
        temperature: float = 0.07,
        embedding_key: str = "embedding",
        label_key: str = "label",
        bank_size: int = 16384,
        num_classes: Optional[int] = None,
    ):
        super().__init__(name, embedding_key, label_key)
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"callbacks.{name}.k", f"must be an int >= 1, got {k!r}.")
        if not temperature > 0:
            raise ConfigError(f"callbacks.{name}.temperature", f"must be > 0, got {temperature!r}.")
        if not isinstance(bank_size, int) or bank_size < 1:
            raise ConfigError(f"callbacks.{name}.bank_size", f"must be an int >= 1, got {bank_size!r}.")
        self.k = k
        self.temperature = float(temperature)
        self.bank_size = bank_size
        self.num_classes = num_classes
        self._bank: Optional[torch.Tensor] = None  # (per_rank, D) this rank's ring buffer
        self._bank_labels: Optional[torch.Tensor] = None  # (per_rank,), -1 = empty slot
        self._ptr = 0
        self._ref: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None  # global bank during evaluation
        self._correct: Optional[torch.Tensor] = None
        self._total: Optional[torch.Tensor] = None

    def setup(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        """Check the name is unique among the Trainer's evaluation callbacks."""
        self.check_unique_name(trainer)

    # ------------------------------------------------------------------ bank
    def _per_rank(self, trainer: "pl.Trainer") -> int:
        return math.ceil(self.bank_size / max(trainer.world_size, 1))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        """Push this batch's normalised embeddings and labels into the ring buffer."""
        emb = self.embeddings(outputs, batch, "fit")
        labels = self.labels(outputs, batch, "fit", emb.shape[0])
        size = self._per_rank(trainer)
        if self._bank is None or self._bank.shape != (size, emb.shape[1]) or self._bank.device != emb.device:
            self._bank = torch.zeros(size, emb.shape[1], device=emb.device)
            self._bank_labels = torch.full((size,), -1, dtype=torch.long, device=emb.device)
            self._ptr = 0
        emb, labels = emb[-size:], labels[-size:]
        slots = (self._ptr + torch.arange(emb.shape[0], device=emb.device)) % size
        self._bank[slots] = F.normalize(emb.float(), dim=1)
        # Unlabelled samples are stored as empty slots, which evaluation skips.
        self._bank_labels[slots] = labels.clamp_min(-1)
        self._ptr = (self._ptr + emb.shape[0]) % size

    def _gather_bank(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        if self._bank is None:
            # Nothing trained yet on this rank (e.g. sanity check); still join the collectives.
            dim = 1
            bank = torch.zeros(self._per_rank(trainer), dim, device=module.device)
            labels = torch.full((self._per_rank(trainer),), -1, dtype=torch.long, device=module.device)
        else:
            bank, labels = self._bank, self._bank_labels
        if trainer.world_size > 1:
            # Ranks that have not trained have a placeholder width; agree on the real one first.
            width = int(gather_equal(trainer, torch.tensor([bank.shape[1]], device=bank.device)).max())
            if bank.shape[1] != width:
                bank = bank.new_zeros(bank.shape[0], width)
            bank, labels = gather_equal(trainer, bank), gather_equal(trainer, labels)
        filled = labels >= 0
        bank, labels = bank[filled], labels[filled]
        classes = self.num_classes if self.num_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
        self._ref = (bank, labels, classes) if len(labels) else None

    # ------------------------------------------------------------------ evaluation
    def _start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        self._gather_bank(trainer, module)
        self._correct = torch.zeros((), dtype=torch.long, device=module.device)
        self._total = torch.zeros((), dtype=torch.long, device=module.device)

    def _accumulate(self, outputs: Any, batch: Any, stage: str) -> None:
        emb = self.embeddings(outputs, batch, stage)
        labels = self.labels(outputs, batch, stage, emb.shape[0])
        if self._ref is None:
            return
        bank, bank_labels, classes = self._ref
        if emb.shape[1] != bank.shape[1]:
            raise ConfigError(
                f"callbacks.{self.name}.embedding_key",
                f"evaluation embeddings have width {emb.shape[1]} but training ones {bank.shape[1]}.",
                "Return the same embedding in every stage.",
            )
        # A label outside the bank's classes can never be predicted; it still counts as a miss.
        pred = knn_predict(emb, bank, bank_labels, max(classes, 1), self.k, self.temperature)
        valid = labels >= 0
        self._correct += ((pred == labels) & valid).sum()
        self._total += valid.sum()

    def _finish(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        has_bank = self._ref is not None
        self._ref = None  # free the gathered bank between evaluations
        acc = accuracy_from_counts(trainer, self._correct, self._total)
        if acc is not None and has_bank:
            self.log_global(module, f"{STAGE_PREFIX[stage]}/{self.name}_acc", acc)

    def on_validation_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Gather the global bank and reset the counters."""
        self._start(trainer, module)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Score this rank's batch against the global bank."""
        self._accumulate(outputs, batch, "validate")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``eval/{name}_acc`` (skipped while the bank is empty, e.g. in the sanity check)."""
        self._finish(trainer, module, "validate")

    def on_test_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Gather the global bank and reset the counters."""
        self._start(trainer, module)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Score this rank's batch against the global bank."""
        self._accumulate(outputs, batch, "test")

    def on_test_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``test/{name}_acc`` (skipped while the bank is empty)."""
        self._finish(trainer, module, "test")
