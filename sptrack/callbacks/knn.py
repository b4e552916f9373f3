"""Online weighted k-nearest-neighbour accuracy against the training images embedded at evaluation time."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

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
    """Weighted kNN accuracy of evaluation embeddings against every training image, embedded now.

    At the start of each validation (or test) epoch the bank is rebuilt: every sample of ``bank``
    (default: the dataset of the Trainer's training loader, as its ``__getitem__`` returns it) is
    embedded once by the current encoder, through the same step that embeds the queries
    (``module.validation_step``, or ``test_step`` in ``trainer.test``), so in eval mode, without
    gradients and with the evaluation loader's device-side transform. The bank therefore holds
    exactly one embedding per training image, from the weights being evaluated (the protocol of Wu
    et al. 2018 and DINO's kNN evaluation). Ranks embed disjoint shares of the bank (equal counts, so
    sharded models run the same collectives) and gather them; the correct counts are summed over
    ranks and ``eval/{name}_acc`` is logged (``test/...`` in ``trainer.test``). Unlabelled samples
    (label < 0) are neither in the bank nor scored; nothing is logged in the sanity check.

    ``bank`` should yield un-augmented images: sptrack's datasets do (their views are made on the
    device). The step runs on bank batches too, so metrics it logs would include them.

    Args:
        name: metric stem.
        k, temperature: kNN parameters (DINO uses k=20, T=0.07).
        embedding_key, label_key: keys of the step's output dict (or the batch).
        bank: a Dataset or DataLoader of the training images (a DataLoader lends its batch size,
            collate function and workers); default: the dataset of the training loader (of the
            latest fit, in a later ``validate``/``test``).
        bank_size: embed only this many bank samples (a fixed seeded subset, the same at every
            evaluation; for large datasets); default: all.
        num_classes: default: 1 + the largest label in the bank.
        batch_size: bank batch size when ``bank`` is not a DataLoader.
    """

    def __init__(
        self,
        name: str = "knn",
        k: int = 20,
        temperature: float = 0.07,
        embedding_key: str = "embedding",
        label_key: str = "label",
        bank: Any = None,
        bank_size: Optional[int] = None,
        num_classes: Optional[int] = None,
        batch_size: int = 256,
    ):
        super().__init__(name, embedding_key, label_key)
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"callbacks.{name}.k", f"must be an int >= 1, got {k!r}.")
        if not temperature > 0:
            raise ConfigError(f"callbacks.{name}.temperature", f"must be > 0, got {temperature!r}.")
        if bank_size is not None and (not isinstance(bank_size, int) or isinstance(bank_size, bool) or bank_size < 1):
            raise ConfigError(f"callbacks.{name}.bank_size", f"must be None or an int >= 1, got {bank_size!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"callbacks.{name}.batch_size", f"must be an int >= 1, got {batch_size!r}.")
        self.k = k
        self.temperature = float(temperature)
        self.bank = bank
        self.bank_size = bank_size
        self.num_classes = num_classes
        self.batch_size = batch_size
        self._ref: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None  # the bank during an evaluation
        self._fit_dataset: Optional[Dataset] = None  # the default bank of a later validate/test
        self._correct: Optional[torch.Tensor] = None
        self._total: Optional[torch.Tensor] = None

    def setup(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        """Check the name is unique among the Trainer's evaluation callbacks."""
        self.check_unique_name(trainer)

    def on_train_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Remember the training dataset: the default bank, also of a later ``validate``/``test`` without one."""
        self._fit_dataset = getattr(trainer.train_dataloader, "dataset", None)

    # ------------------------------------------------------------------ bank
    def _bank_source(self, trainer: "pl.Trainer") -> tuple[Dataset, dict]:
        """The bank's dataset and the loader settings to read it with."""
        source = self.bank
        if source is None:
            source = getattr(trainer.train_dataloader, "dataset", None) or self._fit_dataset
            if source is None:
                raise ConfigError(f"callbacks.{self.name}.bank", "there is no training loader to take the kNN bank from.",
                                  "Pass OnlineKNN(bank=<a loader of the training images>).")
        if isinstance(source, DataLoader):
            return source.dataset, {"batch_size": source.batch_size or self.batch_size, "collate_fn": source.collate_fn,
                                    "num_workers": source.num_workers}
        return source, {"batch_size": self.batch_size}

    def bank_rows(self, size: int) -> list[int]:
        """Rows of a bank dataset of ``size`` samples that are embedded: all, or ``bank_size`` of them drawn with seed 0."""
        if self.bank_size is None or self.bank_size >= size:
            return list(range(size))
        return torch.randperm(size, generator=torch.Generator().manual_seed(0))[: self.bank_size].sort().values.tolist()

    def _rank_share(self, trainer: "pl.Trainer", size: int) -> tuple[list[int], int]:
        """This rank's bank rows (every rank the same count; the padding repeats row 0) and how many are real."""
        rows = self.bank_rows(size)
        world, rank = max(trainer.world_size, 1), trainer.global_rank
        per_rank = math.ceil(len(rows) / world)
        mine = rows[rank::world]
        return mine + [rows[0]] * (per_rank - len(mine)), len(mine)

    @torch.no_grad()
    def _embed_bank(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        dataset, loader_args = self._bank_source(trainer)
        step = module.validation_step if stage == "validate" else module.test_step
        chunks, label_chunks = [], []
        if isinstance(dataset, IterableDataset):
            # A stream (sptrack.data.shards) splits itself over the ranks, equal counts, padding labelled -1.
            if not isinstance(self.bank, DataLoader) or self.bank_size is not None:
                raise ConfigError(f"callbacks.{self.name}.bank", "a streamed bank must be given as its DataLoader, without bank_size.",
                                  "Pass OnlineKNN(bank=<the loader of the training stream>).")
            loader, real = self.bank, None
        else:
            share, real = self._rank_share(trainer, len(dataset))
            # Its own generator: starting a loader otherwise draws a seed from the global RNG, which would
            # shift the run's dropout and augmentations whenever the kNN evaluates.
            loader = DataLoader(Subset(dataset, share), shuffle=False, generator=torch.Generator().manual_seed(0), **loader_args)
        for batch_idx, batch in enumerate(loader):
            batch = trainer.strategy.batch_to_device(batch)
            with trainer.precision_plugin.forward_context():
                outputs = step(batch, batch_idx)
            emb = self.embeddings(outputs, batch, stage)
            chunks.append(F.normalize(emb.float(), dim=1))
            label_chunks.append(self.labels(outputs, batch, stage, emb.shape[0]))
        width = chunks[0].shape[1] if chunks else 0
        bank = torch.cat(chunks) if chunks else torch.zeros(0, width, device=module.device)
        labels = torch.cat(label_chunks) if label_chunks else torch.zeros(0, dtype=torch.long, device=module.device)
        if real is not None:
            labels[real:] = -1  # the padding rows are not samples
        if trainer.world_size > 1:
            bank, labels = gather_equal(trainer, bank), gather_equal(trainer, labels)
        keep = labels >= 0
        bank, labels = bank[keep], labels[keep]
        classes = self.num_classes if self.num_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
        self._ref = (bank, labels, classes) if len(labels) else None

    # ------------------------------------------------------------------ evaluation
    def _start(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        self._ref = None
        if not trainer.sanity_checking:
            self._embed_bank(trainer, module, stage)
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
        """Embed the bank with the current weights and reset the counters."""
        self._start(trainer, module, "validate")

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Score this rank's batch against the global bank."""
        self._accumulate(outputs, batch, "validate")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``eval/{name}_acc`` (skipped while the bank is empty, e.g. in the sanity check)."""
        self._finish(trainer, module, "validate")

    def on_test_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Embed the bank with the current weights and reset the counters."""
        self._start(trainer, module, "test")

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Score this rank's batch against the global bank."""
        self._accumulate(outputs, batch, "test")

    def on_test_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``test/{name}_acc`` (skipped while the bank is empty)."""
        self._finish(trainer, module, "test")
