"""Self-supervised methods: losses and their state (DINO, KoLeo, LeJEPA/SIGReg, I-JEPA)."""

from sptrack.methods.dino import DINOLoss, dino_cross_entropy, teacher_temperature
from sptrack.methods.ijepa import (
           gather_tokens,
           ijepa_loss,
           ijepa_targets,
           predict_blocks,
)
from sptrack.methods.koleo import KoLeo
from sptrack.methods.lejepa import LeJEPALoss, LeJEPAOutput, invariance_loss
from sptrack.methods.sigreg import EppsPulley, SIGReg

__all__ = ["DINOLoss", "EppsPulley", "LeJEPALoss", "LeJEPAOutput", "SIGReg", "dino_cross_entropy", "gather_tokens", "ijepa_loss",
           "ijepa_targets", "invariance_loss", "KoLeo", "predict_blocks", "teacher_temperature"]
