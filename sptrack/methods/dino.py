"""DINO (Caron et al., 2021): self-distillation with a centred, sharpened EMA teacher.

The student sees every view (global and local crops); the teacher sees only the global views. For
every pair of *different* views (teacher view i, student view j), the student's distribution
``softmax(s_j / tau_s)`` is trained towards the teacher's ``softmax((t_i - c) / tau_t)``. The centre
``c`` is an exponential moving average of the teacher outputs (momentum 0.9), computed over the
global batch under DDP; the teacher temperature warms up linearly from 0.04 to 0.07.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sptrack.parallel.collectives import sum_over_ranks


def teacher_temperature(progress: float, start: float = 0.04, end: float = 0.07, warmup: float = 0.3) -> float:
    """Teacher temperature at ``progress`` in [0, 1] of training: linear from ``start`` to ``end``
    over the first ``warmup`` fraction, then constant."""
    if warmup <= 0 or progress >= warmup:
        return end
    return start + (end - start) * max(progress, 0.0) / warmup


def dino_cross_entropy(student: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Mean over ordered pairs of different views of ``-sum_k q_i[k] log p_j[k]``, batch-averaged.

    ``teacher_probs[i]`` pairs with ``student[i]`` (same view) and is skipped for it.
    """
    total, pairs = student[0].new_zeros(()), 0
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    for i, q in enumerate(teacher_probs):
        for j, log_p in enumerate(log_probs):
            if i == j:
                continue
            total = total + torch.sum(-q * log_p, dim=-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("DINO needs at least two views (one teacher view and a different student view).")
    return total / pairs


class DINOLoss(nn.Module):
    """DINO's loss with its centre (a checkpointed buffer) and teacher-temperature schedule."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_fraction = warmup_fraction
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher: Sequence[torch.Tensor], progress: float) -> list[torch.Tensor]:
        """Centred, sharpened teacher distributions (no gradient)."""
        temp = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_temp, self.warmup_fraction)
        return [F.softmax((t.detach() - self.center) / temp, dim=-1) for t in teacher]

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], progress: float) -> torch.Tensor:
        """Loss of the student outputs (all views) against the teacher outputs (global views)."""
        return dino_cross_entropy(student, self.teacher_probs(teacher, progress), self.student_temp)

    @torch.no_grad()
    def update_center(self, teacher: Sequence[torch.Tensor]) -> None:
        """``c <- m c + (1 - m) mean(teacher outputs)``, the mean taken over the global batch."""
        stacked = torch.cat([t.detach() for t in teacher])
        total = stacked.sum(dim=0, keepdim=True, dtype=self.center.dtype)  # not in half precision: counts would round
        total, count = sum_over_ranks(total, total.new_tensor([float(len(stacked))]))
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1.0 - self.center_momentum)
