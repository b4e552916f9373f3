"""Online linear probe: a classifier trained on detached embeddings alongside pretraining."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from sptrack.callbacks.base import STAGE_PREFIX, EvalCallback, accuracy_from_counts
from sptrack.errors import ConfigError


class LinearProbe(nn.Module):
    """``[BatchNorm1d(affine=False)] -> Linear(embed_dim, num_classes)``.

    The optional non-affine BatchNorm (MAE's linear-probe recipe) standardises features whose
    scale drifts during pretraining, which a single learning rate tracks poorly.
    """

    def __init__(self, embed_dim: int, num_classes: int, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim) -> (B, num_classes)`` logits."""
        return self.linear(self.norm(x))


class OnlineProbe(EvalCallback):
    """Train a linear classifier on detached embeddings during pretraining; report held-out accuracy.

    In ``setup`` it registers a :class:`LinearProbe` with ``module.add_callback_module(name, ...)``,
    so the probe gets its own optimizer (shown in ``module.optimizer_summary()``, checkpointed,
    never mixed into the main optimizers) and its cross-entropy is added to the joint loss of each
    training step. The probe reads ``state[embedding_key].detach()``, so the encoder's gradients are
    exactly those of the pretraining loss.

    Logs ``train/{name}_loss`` and ``train/{name}_acc`` at each training step, and
    ``eval/{name}_acc`` (``test/{name}_acc`` in ``trainer.test``) once per evaluation epoch, computed
    over the whole split and summed over all ranks. Labels < 0 are unlabelled samples and are
    skipped. A missing embedding/label key raises a ConfigError naming it.

    Args:
        num_classes: number of classes.
        embed_dim: embedding width; default: the Module's ``embed_dim`` attribute.
        name: callback-module and optimizer name, and metric stem.
        embedding_key, label_key: keys of the forward's output dict (or the batch).
        optimizer: the probe's optimizer (any form the ``optim`` declaration accepts).
        scheduler: optional scheduler for it.
        batch_norm: put a non-affine BatchNorm1d before the linear layer.
        seed: initialisation seed of the probe (the global RNG is left untouched, so adding the
            probe does not change data order or dropout of the run).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: Optional[int] = None,
        name: str = "probe",
        embedding_key: str = "embedding",
        label_key: str = "label",
        optimizer: Any = None,
        scheduler: Any = None,
        batch_norm: bool = False,
        seed: int = 0,
    ):
        super().__init__(name, embedding_key, label_key)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"callbacks.{name}.num_classes", f"must be an int >= 2, got {num_classes!r}.")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.optimizer = optimizer if optimizer is not None else {"type": "AdamW", "lr": 1e-3}
        self.scheduler = scheduler
        self.batch_norm = batch_norm
        self.seed = seed
        self._correct: Optional[torch.Tensor] = None
        self._total: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ registration
    def _resolve_embed_dim(self, module: "pl.LightningModule") -> int:
        dim = self.embed_dim if self.embed_dim is not None else getattr(module, "embed_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(
                f"callbacks.{self.name}.embed_dim",
                f"unknown embedding width (got {dim!r}).",
                "Pass OnlineProbe(embed_dim=...) or give the Module an int attribute embed_dim=...",
            )
        return dim

    def setup(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        """Register the probe and its optimizer (in every stage, so checkpoints holding it load)."""
        self.check_unique_name(trainer)
        self.register(module)

    def register(self, module: "pl.LightningModule") -> None:
        """Add the probe module and its optimizer to ``module`` (idempotent; also used by --dry-run)."""
        if not hasattr(module, "add_callback_module"):
            raise ConfigError(f"callbacks.{self.name}", f"needs an sptrack.Module, got {type(module).__name__}.")
        if self.name in module.callbacks_modules:
            return  # registered by an earlier fit/validate of this Module
        dim = self._resolve_embed_dim(module)
        # Seeded from a forked RNG: registering the probe must not shift the run's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = LinearProbe(dim, self.num_classes, self.batch_norm)
        optim: dict = {"optimizer": self.optimizer}
        if self.scheduler is not None:
            optim["scheduler"] = self.scheduler
        module.add_callback_module(self.name, head.to(module.device), optim=optim, objective=self.objective)

    def objective(self, module: "pl.LightningModule", batch: Mapping, state: Mapping) -> torch.Tensor:
        """Cross-entropy of the probe on detached embeddings; added to the joint training loss."""
        head = module.callbacks_modules[self.name]
        emb = self.embeddings(state, batch, "fit", head.linear.in_features)
        labels = self.labels(state, batch, "fit", emb.shape[0])
        logits = head(emb)
        valid = labels >= 0
        # Sum over labelled samples / their count (at least 1): no host sync, and a batch without
        # labels contributes a zero loss instead of NaN.
        count = valid.sum().clamp_min(1)
        loss = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none").mul(valid).sum() / count
        acc = ((logits.argmax(dim=1) == labels) & valid).sum() / count
        module.log(f"train/{self.name}_loss", loss.detach(), on_step=True, on_epoch=False, batch_size=emb.shape[0])
        module.log(f"train/{self.name}_acc", acc.float(), on_step=True, on_epoch=False, batch_size=emb.shape[0])
        return loss

    # ------------------------------------------------------------------ evaluation
    def _reset(self, module: "pl.LightningModule") -> None:
        self._correct = torch.zeros((), dtype=torch.long, device=module.device)
        self._total = torch.zeros((), dtype=torch.long, device=module.device)

    @torch.no_grad()
    def _accumulate(self, module: "pl.LightningModule", outputs: Any, batch: Any, stage: str) -> None:
        head = module.callbacks_modules[self.name]
        emb = self.embeddings(outputs, batch, stage, head.linear.in_features)
        labels = self.labels(outputs, batch, stage, emb.shape[0])
        valid = labels >= 0
        self._correct += ((head(emb).argmax(dim=1) == labels) & valid).sum()
        self._total += valid.sum()

    def _finish(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        acc = accuracy_from_counts(trainer, self._correct, self._total)
        if acc is not None:
            self.log_global(module, f"{STAGE_PREFIX[stage]}/{self.name}_acc", acc)

    def on_validation_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Reset the correct/total counters."""
        self._reset(module)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Count correct predictions of this rank's batch."""
        self._accumulate(module, outputs, batch, "validate")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``eval/{name}_acc`` over the whole validation split (all ranks)."""
        self._finish(trainer, module, "validate")

    def on_test_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Reset the correct/total counters."""
        self._reset(module)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Count correct predictions of this rank's batch."""
        self._accumulate(module, outputs, batch, "test")

    def on_test_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Log ``test/{name}_acc`` over the whole test split (all ranks)."""
        self._finish(trainer, module, "test")
