"""What a recipe's ``build(cfg)`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class Experiment:
    """What a recipe builds: the Module, its loaders and callbacks, and how to embed images.

    ``encoder_factory()`` returns a fresh, randomly initialised encoder of the same architecture
    (same seed), used for the random-init baseline; ``embed(encoder, images)`` maps an image batch
    to embeddings for the final linear evaluation.
    """

    module: Any
    train_loader: Any
    val_loader: Any
    callbacks: list
    encoder: Any
    encoder_factory: Callable[[], Any]
    embed: Callable[[Any, Any], Any]
    eval_train_loader: Optional[Any] = None

    @property
    def probe_train_loader(self) -> Any:
        """What linear probes fit on: ``eval_train_loader`` (un-augmented images) when given, else ``train_loader``."""
        return self.eval_train_loader or self.train_loader
