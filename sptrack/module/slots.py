"""Runtime state of one named optimizer inside a Module: its optimizer, scheduler and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sptrack.optim.config import OptimizerConfig


@dataclass
class OptimizerSlot:
    """A built optimizer with the config it came from.

    ``index`` is its position in ``trainer.optimizers``; ``param_names`` are the qualified names of
    the parameters it owns (the keys used for pending gradients in checkpoints).
    """

    config: OptimizerConfig
    index: int
    optimizer: torch.optim.Optimizer
    param_names: list[str]
    matched_modules: list[str]
    scheduler: Optional[Any] = None
    clip_val: Optional[float] = None
    clip_algorithm: Optional[str] = None
    params: list = field(default_factory=list)
    #: The lr the optimizer was built with (its first param group), before any scheduler moved it.
    declared_lr: Optional[float] = None

    @property
    def name(self) -> str:
        """The user's name for this optimizer."""
        return self.config.name

    @property
    def lr(self) -> float:
        """Learning rate of the first param group (the one logged as hparams/lr_<name>)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def scheduler_name(self) -> Optional[str]:
        """Class name of the scheduler (built, or as declared when not built yet)."""
        if self.scheduler is not None:
            return type(self.scheduler).__name__
        return self.config.scheduler.name if self.config.scheduler is not None else None

    def steps_at(self, boundary: int) -> bool:
        """Whether this optimizer steps at 1-based accumulation boundary ``boundary``."""
        return boundary % self.config.frequency == 0

    def summary(self) -> dict:
        """Plain-data description of this optimizer, for tables and trackers."""
        group = self.optimizer.param_groups[0]
        return {
            "index": self.index,
            "name": self.name,
            "class": type(self.optimizer).__name__,
            # Always the declared lr (schedulers, warm-up or plateau, move the current one: that is the
            # hparams/lr_<name> series).
            "lr": float(self.declared_lr if self.declared_lr is not None else group.get("initial_lr", group["lr"])),
            "weight_decay": float(group.get("weight_decay", 0.0) or 0.0),
            "modules": self.config.modules if self.config.modules is not None else "<all>",
            "matched_modules": list(self.matched_modules),
            "num_params": int(sum(p.numel() for p in self.params)),
            "frequency": self.config.frequency,
            "scheduler": self.scheduler_name,
            "interval": self.config.interval,
            "monitor": self.config.monitor,
            "gradient_clip_val": self.clip_val,
            "gradient_clip_algorithm": self.clip_algorithm,
        }


def render_summary(rows: list[dict]):
    """A rich Table of :meth:`OptimizerSlot.summary` rows."""
    from rich.table import Table

    table = Table(title="sptrack optimizers", show_lines=False)
    headers = ["#", "name", "class", "lr", "modules", "matched", "params", "freq", "scheduler", "interval", "clip"]
    for h in headers:
        table.add_column(h, overflow="fold")
    for r in rows:
        matched = r["matched_modules"]
        shown = ", ".join(matched[:4]) + (f" (+{len(matched) - 4})" if len(matched) > 4 else "")
        clip = "-" if not r["gradient_clip_val"] else f"{r['gradient_clip_val']:g} ({r['gradient_clip_algorithm'] or 'norm'})"
        table.add_row(
            str(r["index"]),
            r["name"],
            r["class"],
            f"{r['lr']:.3g}",
            r["modules"],
            shown or "<root>",
            f"{r['num_params']:,}",
            str(r["frequency"]),
            (f"{r['scheduler']} on {r['monitor']}" if r.get("monitor") else r["scheduler"]) if r["scheduler"] else "-",
            r["interval"],
            clip,
        )
    return table
