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
    #: The held-out split the end-of-run evaluation scores; default: ``val_loader``. Differs from it
    #: when training evaluates on validation images carved out of the training split.
    heldout_loader: Optional[Any] = None

    @property
    def final_eval_loader(self) -> Any:
        """What the end-of-run evaluation scores: ``heldout_loader`` when given, else ``val_loader``."""
        return self.heldout_loader if self.heldout_loader is not None else self.val_loader

    @property
    def probe_train_loader(self) -> Any:
        """What linear probes fit on: ``eval_train_loader`` (un-augmented images) when given, else ``train_loader``."""
        return self.eval_train_loader if self.eval_train_loader is not None else self.train_loader
