"""Optimizer and scheduler declarations, LARS, and regex assignment of parameters."""

from sptrack.optim.assign import Assignment, assign_parameters
from sptrack.optim.config import OptimizerConfig, parse_optim
from sptrack.optim.factory import optimizer_registry, resolve_optimizer
from sptrack.optim.lars import LARS
from sptrack.optim.schedulers import LinearWarmupCosineAnnealingLR, resolve_scheduler, scheduler_registry

__all__ = [
    "LARS",
    "Assignment",
    "LinearWarmupCosineAnnealingLR",
    "OptimizerConfig",
    "assign_parameters",
    "optimizer_registry",
    "parse_optim",
    "resolve_optimizer",
    "resolve_scheduler",
    "scheduler_registry",
]
