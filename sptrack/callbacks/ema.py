"""EMA teacher (BYOL/DINO/I-JEPA target network) and the callback that updates it after the student's optimizer steps."""

from __future__ import annotations

import copy
import math
from typing import Optional

import lightning.pytorch as pl
import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.module.build import scheduler_run_length

BUFFER_MODES = ("copy", "ema", "keep")


def cosine_momentum(step: float, total: float, base: float = 0.996, final: float = 1.0) -> float:
    """``final - (final - base) * (cos(pi * t / T) + 1) / 2`` with ``t`` clamped to ``[0, T]``.

    ``base`` at t=0, the midpoint at T/2, ``final`` at T (BYOL/DINO schedule).
    """
    if total <= 0:
        return float(final)
    t = min(max(float(step), 0.0), float(total))
    return float(final - (final - base) * (math.cos(math.pi * t / total) + 1.0) / 2.0)


class EMATeacher(nn.Module):
    """A frozen deep copy of a student network, updated as an exponential moving average of it.

    Register it as a Module submodule (``sptrack.Module(..., teacher=EMATeacher(student))``): its
    parameters are frozen, so no optimizer owns them, and they are in the Module's state_dict, so
    checkpoints restore them exactly. Call the teacher like the student (``teacher(x)`` runs the
    copy); other methods are reached through ``teacher.module`` (e.g.
    ``teacher.module.forward_tokens(x)``).

    Args:
        student: the network to copy (its current weights become the teacher's).
        base, final: momentum schedule of :meth:`momentum_at` (see :func:`cosine_momentum`).
        buffers: what happens to buffers (BatchNorm statistics, ...) at each update: ``"copy"``
            the student's, ``"ema"`` (floating buffers averaged like parameters, others copied) or
            ``"keep"`` the teacher's own.
        eval_mode: keep the copy in eval mode even while the Module trains (no dropout or
            drop-path in the teacher; BatchNorm uses running statistics). Use it when the student
            has drop_path/dropout: the teacher of DINO and I-JEPA has none.
    """

    # Under FSDP2 the copy's own modules become the units: recipes call ``teacher.module...`` directly.
    fsdp_transparent = True

    def __init__(self, student: nn.Module, base: float = 0.996, final: float = 1.0, buffers: str = "copy", eval_mode: bool = False):
        super().__init__()
        if not 0.0 <= base <= 1.0 or not 0.0 <= final <= 1.0:
            raise ConfigError("EMATeacher.base", f"base and final momenta must be in [0, 1], got {base} and {final}.")
        if buffers not in BUFFER_MODES:
            raise ConfigError("EMATeacher.buffers", f"unknown mode {buffers!r}.", f"Use one of {BUFFER_MODES}.")
        self.base = float(base)
        self.final = float(final)
        self.buffers_mode = buffers
        self.eval_mode = eval_mode
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        # Updates done so far; a persistent buffer, so it is checkpointed with the weights.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        if eval_mode:
            self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        """Follow the Module's mode, unless ``eval_mode`` pins the copy to eval."""
        super().train(mode)
        if self.eval_mode:
            self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        """Run the teacher copy (no graph is recorded for its frozen parameters)."""
        return self.module(*args, **kwargs)

    def momentum_at(self, step: float, total: float) -> float:
        """Momentum of update ``step`` (0-based) of ``total``: :func:`cosine_momentum` with this teacher's base/final."""
        return cosine_momentum(step, total, self.base, self.final)

    def _pairs(self, student: nn.Module, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mine = dict(getattr(self.module, f"named_{kind}")())
        theirs = dict(getattr(student, f"named_{kind}")())
        if mine.keys() != theirs.keys():
            missing = sorted(set(mine) ^ set(theirs))[:5]
            raise ConfigError(
                "EMATeacher.student", f"the student's {kind} differ from the teacher's (e.g. {missing}).",
                "Update the teacher from the network it was copied from.",
            )
        pairs = [(mine[n], theirs[n]) for n in mine]
        for (name, (t, s)) in zip(mine, pairs):
            if t.shape != s.shape:
                raise ConfigError("EMATeacher.student", f"{name}: teacher shape {tuple(t.shape)} != student shape {tuple(s.shape)}.")
        return pairs

    @torch.no_grad()
    def update_with_momentum(self, student: nn.Module, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter.

        ``lerp`` keeps values that already agree exactly equal (frozen weights such as DINO's
        weight-norm magnitude stay exactly 1).
        """
        weight = 1.0 - float(momentum)
        for t, s in self._pairs(student, "parameters"):
            t.lerp_(s.detach().to(t.dtype), weight)
        if self.buffers_mode != "keep":
            for t, s in self._pairs(student, "buffers"):
                if self.buffers_mode == "ema" and t.is_floating_point():
                    t.lerp_(s.to(t.dtype), weight)
                else:
                    t.copy_(s)
        self.num_updates += 1

    def update(self, student: nn.Module, step: float, total_steps: float) -> float:
        """EMA update with the momentum of ``step`` out of ``total_steps``; returns the momentum used."""
        momentum = self.momentum_at(step, total_steps)
        self.update_with_momentum(student, momentum)
        return momentum


def _resolve(module: nn.Module, path: str, key: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in module.named_children()]
        raise ConfigError(key, f"the Module has no submodule {path!r}.", f"Its children are {names}.") from None


class EMAUpdate(pl.Callback):
    """Update ``module.<teacher_attr>`` (an :class:`EMATeacher`) from ``module.<student_attr>`` after the student's steps.

    Runs in ``on_train_batch_end`` only when ``trainer.global_step`` advanced during the batch,
    i.e. at the end of an accumulation boundary (with accumulation, at most one update per N
    micro-batches). Boundary ``b = global_step`` (1-based) updates the teacher only if the student
    moved there: on an :class:`sptrack.Module`, when at least one optimizer owning student
    parameters steps at ``b`` (:meth:`~sptrack.Module.optimizers_owning`,
    :meth:`~sptrack.Module.optimizers_stepping_at`). With every student optimizer at
    ``frequency=f`` the teacher is updated at boundaries f, 2f, ...; with mixed frequencies
    (e.g. backbone 1, head 2) at every boundary where any part stepped. Other LightningModules,
    and a student no optimizer owns, update at every boundary.

    The update at boundary ``b`` of a run of ``T`` boundaries uses
    ``cosine_momentum(b - 1, T, base, final)``: the momentum follows the schedule position of the
    boundary, so the schedule's shape over the run does not depend on the frequencies (skipped
    boundaries just skip their value). ``T`` counts accumulation boundaries (``max_epochs`` x
    batches / N, capped by ``max_steps``) unless ``total_steps`` is given. Whether and how a
    boundary updates depends only on ``b``, so a resumed run continues exactly. Each update sends
    ``hparams/momentum_{teacher_attr}`` to the loggers at step ``b - 1`` (rank 0); skipped
    boundaries log nothing.

    Args:
        student_attr, teacher_attr: dotted submodule paths in the Module.
        base, final: momentum schedule; default: the teacher's own ``base``/``final``.
        total_steps: schedule length in boundaries; default: the run length.
        log_momentum: log the momentum used at each update.
    """

    def __init__(
        self,
        student_attr: str,
        teacher_attr: str,
        base: Optional[float] = None,
        final: Optional[float] = None,
        total_steps: Optional[int] = None,
        log_momentum: bool = True,
    ):
        self.student_attr = student_attr
        self.teacher_attr = teacher_attr
        self.base = base
        self.final = final
        self.total_steps = total_steps
        self.log_momentum = log_momentum
        self._total: Optional[int] = None
        self._step_before: Optional[int] = None
        #: Optimizers owning student parameters; None: update at every boundary.
        self._owners: Optional[frozenset[str]] = None

    @property
    def state_key(self) -> str:
        """Unique per teacher, so several EMA pairs can be updated by separate callbacks."""
        return self._generate_state_key(student=self.student_attr, teacher=self.teacher_attr)

    def _modules(self, module: nn.Module) -> tuple[nn.Module, EMATeacher]:
        student = _resolve(module, self.student_attr, "callbacks.EMAUpdate.student_attr")
        teacher = _resolve(module, self.teacher_attr, "callbacks.EMAUpdate.teacher_attr")
        if not isinstance(teacher, EMATeacher):
            raise ConfigError(
                "callbacks.EMAUpdate.teacher_attr", f"{self.teacher_attr!r} is a {type(teacher).__name__}, not an EMATeacher.",
                f"Register EMATeacher({self.student_attr}) as a Module attribute.",
            )
        return student, teacher

    def setup(self, trainer: "pl.Trainer", module: "pl.LightningModule", stage: str) -> None:
        """Fail early when the attributes are wrong or the teacher does not mirror the student."""
        student, teacher = self._modules(module)
        teacher._pairs(student, "parameters")

    def on_train_start(self, trainer: "pl.Trainer", module: "pl.LightningModule") -> None:
        """Fix the schedule length (accumulation boundaries of this run) and the optimizers that move the student."""
        total = self.total_steps
        if total is None:
            total = scheduler_run_length(trainer, getattr(module, "accumulate_grad_batches", 1), "step", 1)
        if total is None or total < 1:
            raise ConfigError(
                "callbacks.EMAUpdate.total_steps", "the run length is unbounded or empty, so the momentum schedule has no end.",
                "Set max_steps/max_epochs on the Trainer or pass total_steps=.",
            )
        self._total = int(total)
        self._owners = None
        if hasattr(module, "optimizers_owning") and hasattr(module, "optimizers_stepping_at"):
            student, _ = self._modules(module)
            owners = module.optimizers_owning(student)
            self._owners = frozenset(owners) if owners else None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        """Remember global_step, to see whether this batch ends an accumulation boundary."""
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        """After an optimizer boundary where the student stepped, move the teacher towards it."""
        if self._step_before is None or trainer.global_step <= self._step_before:
            return
        boundary = trainer.global_step
        if self._owners is not None and self._owners.isdisjoint(module.optimizers_stepping_at(boundary)):
            return  # the student did not move at this boundary
        student, teacher = self._modules(module)
        base = teacher.base if self.base is None else self.base
        final = teacher.final if self.final is None else self.final
        momentum = cosine_momentum(boundary - 1, self._total, base, final)
        teacher.update_with_momentum(student, momentum)
        if self.log_momentum and trainer.is_global_zero:
            # Straight to the loggers, at the step axis of the boundary (as the Module logs its
            # learning rates): self.log would repeat the value at the batches between boundaries.
            for logger in trainer.loggers:
                logger.log_metrics({f"hparams/momentum_{self.teacher_attr}": momentum}, step=boundary - 1)
