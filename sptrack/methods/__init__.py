"""Self-supervised methods: losses and their state (DINO; I-JEPA and LeJEPA follow)."""

from sptrack.methods.dino import DINOLoss, dino_cross_entropy, teacher_temperature

__all__ = ["DINOLoss", "dino_cross_entropy", "teacher_temperature"]
