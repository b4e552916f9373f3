"""Resolve the batch-level (GPU-side) transform for the dataloader that produced a batch."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import lightning.pytorch as pl
from torch import nn

from sptrack.errors import ConfigError

# Stage names a DataModule's per-stage dict may use, for each trainer stage.
_STAGE_ALIASES = {
    "train": ("train", "fit"),
    "val": ("val", "validate", "validation"),
    "test": ("test",),
    "predict": ("predict",),
}


def active_stage(trainer: "pl.Trainer") -> Optional[str]:
    """The trainer's running stage as 'train' | 'val' | 'test' | 'predict' (None when idle)."""
    if trainer.training:
        return "train"
    if trainer.validating or trainer.sanity_checking:
        return "val"
    if trainer.testing:
        return "test"
    if trainer.predicting:
        return "predict"
    return None


def _active_dataloader(trainer: "pl.Trainer", stage: str, dataloader_idx: int):
    loaders = {
        "train": lambda: trainer.train_dataloader,
        "val": lambda: trainer.val_dataloaders,
        "test": lambda: trainer.test_dataloaders,
        "predict": lambda: trainer.predict_dataloaders,
    }[stage]()
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    if isinstance(loaders, Mapping):
        values = list(loaders.values())
        return values[dataloader_idx] if dataloader_idx < len(values) else None
    return loaders


def resolve_gpu_transform(trainer: "pl.Trainer", dataloader_idx: int) -> Optional[Callable[[Any], Any]]:
    """First of: the active dataset's ``gpu_transform``, the DataModule's (callable or per-stage dict)."""
    stage = active_stage(trainer)
    if stage is None:
        return None
    loader = _active_dataloader(trainer, stage, dataloader_idx)
    dataset = getattr(loader, "dataset", None)
    found = getattr(dataset, "gpu_transform", None)
    if found is not None:
        return found
    datamodule = getattr(trainer, "datamodule", None)
    found = getattr(datamodule, "gpu_transform", None)
    if isinstance(found, Mapping):
        for alias in _STAGE_ALIASES[stage]:
            if alias in found:
                return found[alias]
        unknown = [k for k in found if not any(k in a for a in _STAGE_ALIASES.values())]
        if unknown:
            raise ConfigError(
                f"datamodule.gpu_transform.{unknown[0]}",
                "is not a stage name.",
                "Use 'train', 'val', 'test' or 'predict'.",
            )
        return None
    return found


class GpuTransformCache:
    """Remembers each dataloader's resolved transform and moves nn.Module transforms once per device."""

    def __init__(self) -> None:
        self._resolved: dict[tuple, Optional[Callable]] = {}
        self._placed: dict[int, Any] = {}

    def clear(self) -> None:
        """Forget everything (a new run may bring other dataloaders)."""
        self._resolved.clear()
        self._placed.clear()

    def __call__(self, trainer: "pl.Trainer", batch: Any, dataloader_idx: int, device) -> Any:
        """Apply the resolved transform to ``batch`` (unchanged when none resolves)."""
        stage = active_stage(trainer)
        loader = _active_dataloader(trainer, stage, dataloader_idx) if stage else None
        key = (stage, dataloader_idx, id(loader))
        if key not in self._resolved:
            self._resolved[key] = resolve_gpu_transform(trainer, dataloader_idx)
        transform = self._resolved[key]
        if transform is None:
            return batch
        if isinstance(transform, nn.Module) and self._placed.get(id(transform)) != device:
            transform.to(device)
            self._placed[id(transform)] = device
        return transform(batch)
