"""``sptrack.Module``: a LightningModule with manual optimization over several named optimizers."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from sptrack.console import print_table
from sptrack.errors import ConfigError
from sptrack.module.build import build_slots
from sptrack.module.lightning_glue import (
    HOT_PLAIN_ATTRIBUTES,
    attached_trainer,
    fit_runs_validation,
    restore_gradient_settings,
    set_logging_step,
    take_over_gradient_settings,
)
from sptrack.module.slots import OptimizerSlot, render_summary
from sptrack.module.step_state import StepState
from sptrack.module.trainer import Trainer
from sptrack.module.transforms import GpuTransformCache
from sptrack.optim.assign import Assignment, assign_parameters
from sptrack.optim.config import OptimizerConfig, parse_entry, parse_optim
from sptrack.optim.entry import OptimizerEntry
from sptrack.optim.schedulers import is_plateau
from sptrack.parallel.fsdp2 import default_parallelize_fn, is_sharded, reject_fsdp1

#: Attributes holding modules that evaluation callbacks register; never given to main optimizers.
CALLBACK_CONTAINERS = ("callbacks_modules", "callbacks_metrics")
#: What a Module gets when no ``optim`` is declared.
DEFAULT_OPTIM = {"optimizer": {"type": "AdamW", "lr": 1e-3}}
_CHECKPOINT_KEY = "sptrack"



class Module(pl.LightningModule):
    """A LightningModule whose training step is one backward of a joint loss and a per-optimizer step.

    ``Module(forward=fn, optim={...}, backbone=net, head=mlp, ...)``: every extra keyword becomes an
    attribute (``nn.Module`` values become registered submodules). ``fn(self, batch, stage)`` gets a
    dict batch and a stage ('fit', 'validate', 'test', 'predict') and returns a dict; during 'fit' it
    must hold ``loss``.

    Optimization semantics, all counted over the whole run (cycles continue across epoch ends and
    checkpoints):

    * accumulation: with ``Trainer(accumulate_grad_batches=N)`` each micro-batch's loss is scaled by
      ``1/N`` and an *accumulation boundary* happens every N micro-batches;
    * ``trainer.global_step`` advances once per boundary, whatever the optimizers do;
    * an optimizer with ``frequency=f`` steps at boundaries f, 2f, 3f, ... on the gradient averaged
      over its last f boundaries (its gradients are kept until it steps, and only its own are zeroed);
    * clipping (per-optimizer ``gradient_clip_val``/``gradient_clip_algorithm``, else the Trainer's)
      is applied to that optimizer's parameters right before it steps, after AMP unscaling;
    * fp16 mixed precision: one ``GradScaler.update()`` per boundary, frequency windows summed
      unscaled (see :mod:`sptrack.module.scaling`);
    * DDP/FSDP2 synchronise gradients once per boundary, not per micro-batch (see :mod:`sptrack.module.sync`);
    * ``interval="step"`` schedulers step each time their optimizer steps, ``"epoch"`` ones once per
      epoch; ReduceLROnPlateau steps on its ``monitor`` metric;
    * ``hparams/lr_<name>`` logs the lr each optimizer used, at each of its steps.

    Args:
        forward: ``fn(module, batch, stage) -> dict``; or override :meth:`forward` in a subclass.
        hparams: saved with ``save_hyperparameters`` (and so in checkpoints and loggers).
        parallelize_fn: ``fn(module, device_mesh)`` applied under FSDP2 (default: shard every
            parameter-owning child except callback modules, then the root).
        strict: raise instead of warning when trainable parameters belong to no optimizer.
        **modules_and_attrs: submodules and attributes, including ``optim``: ``{name: entry}``, each
            entry an :class:`~sptrack.optim.entry.OptimizerEntry` (what recipes write) or a dict of
            the dict form, or the single form (see :func:`sptrack.optim.config.parse_optim`).
    """

    def __init__(
        self,
        *,
        forward: Optional[Callable] = None,
        hparams: Optional[Mapping] = None,
        parallelize_fn: Optional[Callable] = None,
        strict: bool = False,
        **modules_and_attrs: Any,
    ):
        super().__init__()
        self.automatic_optimization = False
        self._forward_fn = forward
        self.parallelize_fn = parallelize_fn
        self.strict = strict
        for name in CALLBACK_CONTAINERS:
            setattr(self, name, nn.ModuleDict())
        modules_and_attrs.setdefault("optim", DEFAULT_OPTIM)
        for name, value in modules_and_attrs.items():
            if name in CALLBACK_CONTAINERS or name in ("forward", "trainer"):
                raise ConfigError(name, "is reserved by sptrack.Module.", "Choose another attribute name.")
            setattr(self, name, value)
        if hparams is not None:
            self.save_hyperparameters(dict(hparams))
        self._optim_configs = parse_optim(self.optim)
        # Assigned now, so a bad pattern fails before any Trainer exists; fit reuses it (see parameter_assignment).
        self._assignment: Optional[Assignment] = assign_parameters(self, self._optim_configs, exclude=CALLBACK_CONTAINERS)
        self._callback_optim: list[tuple[OptimizerConfig, str]] = []
        self._objectives: dict[str, Callable] = {}
        self._steps = StepState()
        self._gpu_transforms = GpuTransformCache()

    #: Lets ``estimated_stepping_batches`` count accumulation boundaries (see lightning_glue).
    counts_in_boundaries = True

    def __setattr__(self, name: str, value: Any) -> None:
        """``nn.Module.__setattr__``, with a direct write for Lightning's per-hook ``HOT_PLAIN_ATTRIBUTES``."""
        if name in HOT_PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ attachment and set-up
    @property
    def trainer(self) -> "pl.Trainer":
        """The attached Trainer (see LightningModule.trainer)."""
        return pl.LightningModule.trainer.fget(self)

    @trainer.setter
    def trainer(self, trainer: Optional["pl.Trainer"]) -> None:
        pl.LightningModule.trainer.fset(self, trainer)
        if isinstance(trainer, pl.Trainer):
            if not isinstance(trainer, Trainer) and int(trainer.accumulate_grad_batches) > 1:
                # Lightning's own Trainer would report estimated_stepping_batches (which schedules and
                # recipes read) in micro-batches per epoch, not in the boundaries global_step counts.
                raise ConfigError(
                    "accumulate_grad_batches",
                    "a plain lightning.pytorch.Trainer cannot accumulate for an sptrack.Module.",
                    "Use sptrack.Trainer (the same arguments).",
                )
            self._steps.settings = take_over_gradient_settings(trainer)

    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches per accumulation boundary (the Trainer's ``accumulate_grad_batches``)."""
        return self._steps.accumulate

    @property
    def step_state(self) -> StepState:
        """The :class:`~sptrack.module.step_state.StepState` that owns slots, cycles, scaling and sync."""
        return self._steps

    @property
    def _slots(self) -> list[OptimizerSlot]:
        return self._steps.slots

    def setup(self, stage: str) -> None:
        """Reject FSDP1 and plateau schedulers that watch a validation metric no loop will log; reset the
        micro-batch counter before a checkpoint may restore it."""
        reject_fsdp1(self.trainer.strategy)
        if stage == "fit":
            self._check_plateau_monitors()
            self._steps.reset()
        self._gpu_transforms.clear()

    def _check_plateau_monitors(self) -> None:
        # A monitor named like a validation metric cannot be logged by a fit without validation; any
        # other missing metric is reported when the scheduler first steps (sptrack.module.stepping).
        if fit_runs_validation(self.trainer):
            return
        for config in [*self._optim_configs, *(c for c, _ in self._callback_optim)]:
            monitor = config.monitor
            if is_plateau(config.scheduler) and monitor is not None and monitor.startswith(("val", "eval")):
                raise ConfigError(config.key_of("monitor"), f"ReduceLROnPlateau watches {monitor!r}, but this fit runs no validation loop.",
                                  "Give fit a val dataloader (and keep limit_val_batches > 0), or monitor a metric the training step logs.")

    def teardown(self, stage: str) -> None:
        """Hand the Trainer its accumulation/clipping settings back; stop controlling gradient sync."""
        trainer = attached_trainer(self)
        if trainer is not None:
            restore_gradient_settings(trainer)
        self._steps.release()

    def configure_model(self) -> None:
        """Under FSDP2 (a device mesh exists) shard the model once with ``parallelize_fn``."""
        mesh = self.device_mesh
        if mesh is None or is_sharded(self):
            return
        (self.parallelize_fn or default_parallelize_fn)(self, mesh)

    # ------------------------------------------------------------------ parameters
    def _callback_param_ids(self) -> set[int]:
        return {id(p) for name in CALLBACK_CONTAINERS for p in getattr(self, name).parameters()}

    def named_parameters(
        self, with_callbacks: bool = True, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """``nn.Module.named_parameters``; ``with_callbacks=False`` leaves out callback modules/metrics."""
        items = super().named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate)
        if with_callbacks:
            yield from items
            return
        skip = self._callback_param_ids()
        for name, param in items:
            if id(param) not in skip:
                yield name, param

    def parameters(self, with_callbacks: bool = True, recurse: bool = True) -> Iterator[nn.Parameter]:
        """``nn.Module.parameters`` routed through :meth:`named_parameters`."""
        for _, param in self.named_parameters(with_callbacks=with_callbacks, recurse=recurse):
            yield param

    # ------------------------------------------------------------------ forward and steps
    def forward(self, batch: dict, stage: str) -> dict:
        """Run the user's forward function (or a subclass override) and return its dict."""
        if self._forward_fn is None:
            raise NotImplementedError("sptrack.Module needs forward=fn(module, batch, stage) or a forward override.")
        return self._forward_fn(self, batch, stage)

    def _run_forward(self, batch: Any, batch_idx: int, stage: str) -> dict:
        if not isinstance(batch, dict):
            raise ValueError(
                f"sptrack.Module expects dict batches, got {type(batch).__name__}. "
                "Make the dataset return dicts such as {'image': x, 'label': y}."
            )
        batch["batch_idx"] = batch_idx
        state = self(batch, stage)
        if not isinstance(state, Mapping):
            raise TypeError(f"forward(batch, stage={stage!r}) must return a dict, got {type(state).__name__}.")
        return state

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        """Forward ('fit'), one backward of ``state['loss']``, then the steps due at this boundary."""
        state = self._run_forward(batch, batch_idx, "fit")
        if "loss" not in state:
            raise KeyError(f"forward(batch, stage='fit') must return a 'loss' entry; it returned keys {sorted(state)}.")
        loss = state["loss"]
        for objective in self._objectives.values():
            loss = loss + objective(self, batch, state)
        steps = self._steps
        accumulate = steps.accumulate
        # The hot path reads the attached Trainer directly: the `trainer` property re-checks attachment.
        trainer = attached_trainer(self)
        step_before = trainer.global_step
        steps.before_backward(trainer)
        self.manual_backward(loss / accumulate if accumulate > 1 else loss)
        self.after_manual_backward()
        steps.after_backward(self, trainer, step_before + 1)
        if accumulate > 1:
            set_logging_step(trainer, step_before)
        return state

    def after_manual_backward(self) -> None:
        """Hook between the backward pass and any optimizer step or ``zero_grad``; no-op by default."""

    def on_validation_model_zero_grad(self) -> None:
        """Keep gradients across validation: they may be an unfinished accumulation/frequency cycle."""

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        """Forward with stage 'validate'; the dict reaches callbacks' ``on_validation_batch_end``."""
        return self._run_forward(batch, batch_idx, "validate")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Forward with stage 'test'."""
        return self._run_forward(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Forward with stage 'predict' (no loss needed)."""
        return self._run_forward(batch, batch_idx, "predict")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply the dataset's ``gpu_transform`` (else the DataModule's) on the device-side batch."""
        if attached_trainer(self) is None:
            return batch
        return self._gpu_transforms(self.trainer, batch, dataloader_idx, self.device)

    # ------------------------------------------------------------------ optimizers
    def add_callback_module(
        self,
        name: str,
        module: nn.Module,
        *,
        optim: Optional[Mapping | OptimizerEntry] = None,
        objective: Optional[Callable[["Module", dict, Mapping], torch.Tensor]] = None,
    ) -> None:
        """Register an evaluation callback's module under ``callbacks_modules[name]``.

        Its parameters never reach the main optimizers. ``optim`` (an entry of the named form: a
        dict or an :class:`~sptrack.optim.entry.OptimizerEntry`, without ``modules``) gives it its
        own optimizer, named ``name``, which steps with the same frequency/accumulation/clipping/
        scheduler rules and appears in the optimizer table.
        ``objective(module, batch, state)`` returns a loss added to the joint loss before the single
        backward of each training step; it should use detached inputs so that the encoder's
        gradients stay untouched. Call this from a Callback's ``setup`` (before optimizers exist).
        """
        key = f"callbacks.{name}"
        taken = {c.name for c in self._optim_configs} | set(self.callbacks_modules.keys())
        if name in taken:
            raise ConfigError(key, f"the name {name!r} is already used by an optimizer or callback module.", "Pick another name.")
        if self._steps.slots:
            raise RuntimeError(f"{key}: add_callback_module must be called before optimizers are configured (in Callback.setup).")
        if optim is not None:
            if (optim.modules is not None) if isinstance(optim, OptimizerEntry) else "modules" in optim:
                raise ConfigError(f"{key}.optim.modules", "a callback optimizer owns exactly its module.", "Remove 'modules'.")
            config = parse_entry(name, optim, f"{key}.optim")
            config.modules = f"callbacks_modules.{name}"  # shown in tables; not used as a regex
            self._callback_optim.append((config, config.modules))
        if objective is not None:
            self._objectives[name] = objective
        self.callbacks_modules[name] = module

    def configure_optimizers(self):
        """Build one optimizer (and scheduler) per named entry of ``optim`` and per callback module."""
        self._steps.slots = build_slots(
            self,
            self._optim_configs,
            self._callback_optim,
            self.parameter_assignment(),
            trainer=attached_trainer(self),
            accumulate=self.accumulate_grad_batches,
            strict=self.strict,
        )
        schedulers = []
        for slot in self._steps.slots:
            if slot.scheduler is not None:
                entry = {"scheduler": slot.scheduler, "interval": slot.config.interval, "frequency": 1, "name": slot.name}
                if slot.config.monitor is not None:
                    entry["monitor"] = slot.config.monitor
                schedulers.append(entry)
        return [slot.optimizer for slot in self._steps.slots], schedulers

    def parameter_assignment(self) -> Assignment:
        """Which parameters each main optimizer owns (the regex assignment of ``optim``).

        Computed once, at construction, and reused by :meth:`configure_optimizers` and
        :meth:`plan_optimizers` on the current parameter objects (looked up by name, so FSDP2's
        sharded parameters are found); computed again only if modules or trainable parameters
        were added, removed, frozen or tied since.
        """
        assignment = self._assignment.rebind(self, CALLBACK_CONTAINERS) if self._assignment is not None else None
        if assignment is None:
            assignment = assign_parameters(self, self._optim_configs, exclude=CALLBACK_CONTAINERS)
        self._assignment = assignment
        return assignment

    def plan_optimizers(self) -> list[dict]:
        """The optimizer summary as it will be at train start, computed now without a Trainer.

        Builds throw-away optimizers (schedulers are named, not built; clip values not yet filled
        from the Trainer), so bad declarations surface before any training starts.
        """
        slots = build_slots(
            self, self._optim_configs, self._callback_optim, self.parameter_assignment(), trainer=None,
            accumulate=self.accumulate_grad_batches, strict=self.strict, with_schedulers=False,
        )
        return [slot.summary() for slot in slots]

    def optimizers_stepping_at(self, boundary: int) -> list[str]:
        """Names of the optimizers that step at 1-based accumulation boundary ``boundary``.

        ``boundary`` is ``trainer.global_step`` right after that boundary; an optimizer with
        ``frequency=f`` steps when ``boundary % f == 0`` (see :meth:`OptimizerSlot.steps_at`).
        In the order of ``trainer.optimizers``; empty before :meth:`configure_optimizers`.
        """
        return [slot.name for slot in self._steps.slots if slot.steps_at(boundary)]

    def optimizers_owning(self, submodule: nn.Module) -> list[str]:
        """Names of the optimizers that own at least one parameter of ``submodule`` (matched by identity).

        In the order of ``trainer.optimizers``; empty before :meth:`configure_optimizers` and for a
        submodule no optimizer trains (frozen, or left unassigned).
        """
        ids = {id(p) for p in submodule.parameters()}
        return [slot.name for slot in self._steps.slots if any(id(p) in ids for p in slot.params)]

    def optimizer_summary(self) -> list[dict]:
        """One plain dict per optimizer (name, class, lr, modules, params, frequency, scheduler, clip...)."""
        return [slot.summary() for slot in self._steps.slots]

    def on_train_start(self) -> None:
        """Bind the step state to the strategy (optimizers, clip defaults, scaler, sync), print the table."""
        if getattr(self, "gpu_transform", None) is not None:
            raise ConfigError(
                "gpu_transform",
                "setting a gpu_transform on the Module is not supported.",
                "Attach it to the dataset (dataset.gpu_transform) or the DataModule instead.",
            )
        self._steps.bind(self.trainer, self)
        self._print_summary()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping optimizer's gradients (runs after AMP unscaling, before the step).

        Subclasses overriding this hook must call ``super().on_before_optimizer_step(optimizer)``.
        """
        self._steps.clip(optimizer)

    def on_train_epoch_end(self) -> None:
        """Step every ``interval='epoch'`` scheduler once."""
        self._steps.step_epoch_schedulers(self.trainer)

    @rank_zero_only
    def _print_summary(self) -> None:
        print_table(render_summary(self.optimizer_summary()))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the position in the accumulation/frequency cycles and the gradients not yet applied."""
        checkpoint[_CHECKPOINT_KEY] = self._steps.state_dict(dict(self.named_parameters()))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the cycle position; pending gradients are re-attached when training starts."""
        state = checkpoint.get(_CHECKPOINT_KEY)
        if state is None:
            return
        self._steps.load_state_dict(state)
