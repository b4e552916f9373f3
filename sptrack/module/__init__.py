"""The sptrack Module (manual multi-optimizer LightningModule) and Trainer."""

from sptrack.module.module import Module
from sptrack.module.trainer import Trainer

__all__ = ["Module", "Trainer"]
