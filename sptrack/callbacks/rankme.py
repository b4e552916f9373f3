"""RankMe (Garrido et al. 2023): effective rank of the embeddings of a held-out split."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from sptrack.callbacks.base import STAGE_PREFIX, EvalCallback
from sptrack.callbacks.distributed import gather_equal, gather_rows
from sptrack.errors import ConfigError


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Smooth effective rank of an ``(N, D)`` embedding matrix, in ``[1, min(N, D)]`` (up to eps).

    ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values
    ``sigma`` (the paper's definition; eps keeps ``log`` finite for zero singular values). Computed
    in float64. Embeddings are not centred, as in the paper.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ConfigError("embeddings", f"must be a non-empty (N, D) tensor, got shape {tuple(embeddings.shape)}.")
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return torch.exp(-(p * p.log()).sum())


class RankMe(EvalCallback):
    """Log the RankMe effective rank of the validation embeddings as ``eval/{name}``.

    Embeddings of every validation batch are kept (detached, fp32, at most
    ``ceil(max_samples / world_size)`` per rank), gathered from all ranks at the end of the epoch,
    and the rank is computed on the full matrix (``test/{name}`` in ``trainer.test``). The paper
    recommends at least ~25k samples for a stable estimate when D is large; the value is bounded
    by ``min(N, D)``.

    Args:
        name: metric stem.
        embedding_key: key of the forward's output dict (or the batch).
        max_samples: cap on the number of embeddings used (globally).
        eps: the ``eps`` of :func:`rankme`.
    """

    def __init__(self, name: str = "rankme", embedding_key: str = "embedding", max_samples: int = 25600, eps: float = 1e-7):
        super().__init__(name, embedding_key, label_key=None)
        if not isinstance(max_samples, int) or max_samples < 2:
            raise ConfigError(f"callbacks.{name}.max_samples", f"must be an int >= 2, got {max_samples!r}.")
        self.max_samples = max_samples
        self.eps = eps
        self._chunks: list[torch.Tensor] = []
        self._count = 0

    def setup(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        """Check the name is unique among the Trainer's evaluation callbacks."""
        self.check_unique_name(trainer)

    def _start(self) -> None:
        self._chunks, self._count = [], 0

    def _accumulate(self, trainer: "pl.Trainer", outputs: Any, batch: Any, stage: str) -> None:
        emb = self.embeddings(outputs, batch, stage)
        room = math.ceil(self.max_samples / max(trainer.world_size, 1)) - self._count
        if room > 0:
            self._chunks.append(emb[:room].float())
            self._count += min(room, emb.shape[0])

    def _finish(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        local = torch.cat(self._chunks) if self._chunks else None
        self._start()
        if trainer.world_size > 1:
            width = local.shape[1] if local is not None else 0
            # Every rank must join the gather, even one without batches; it sends zero rows.
            width_all = int(gather_equal(trainer, torch.tensor([width], device=module.device)).max())
            if local is None:
                local = torch.zeros(0, width_all, device=module.device)
            local = gather_rows(trainer, local)
        value: Optional[torch.Tensor] = rankme(local, self.eps) if local is not None and local.shape[0] else None
        if value is not None:
            self.log_global(module, f"{STAGE_PREFIX[stage]}/{self.name}", value)

    def on_validation_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Forget the previous epoch's embeddings."""
        self._start()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep this batch's embeddings (up to the per-rank cap)."""
        self._accumulate(trainer, outputs, batch, "validate")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Gather all ranks' embeddings and log ``eval/{name}``."""
        self._finish(trainer, module, "validate")

    def on_test_epoch_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Forget the previous epoch's embeddings."""
        self._start()

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep this batch's embeddings (up to the per-rank cap)."""
        self._accumulate(trainer, outputs, batch, "test")

    def on_test_epoch_end(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Gather all ranks' embeddings and log ``test/{name}``."""
        self._finish(trainer, module, "test")
