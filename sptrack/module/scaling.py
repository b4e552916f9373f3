"""fp16 loss scaling at accumulation boundaries: one ``GradScaler.update()`` however many optimizers step.

Under ``precision="16-mixed"`` every backward scales the loss by the scaler's current scale S
(Lightning's precision plugin does it in ``manual_backward``). S only changes in ``update()``, so
within one accumulation window every micro-batch uses the same S. At each boundary, following
torch's AMP pattern for several optimizers (``unscale_`` -> clip -> ``step`` per optimizer, then a
single ``update``):

* every optimizer's gradients, which hold exactly this boundary's contribution, are unscaled with
  ``scaler.unscale_`` (so ``update()`` sees an inf/nan in any of them, whether it steps now or not);
* an optimizer that does not step at this boundary (``frequency=f`` > 1) moves its unscaled
  gradients into a window sum kept here and its ``param.grad`` is cleared, so the next boundary
  unscales only new gradients with their own scale: a window never mixes scales;
* an optimizer that steps adds its window, divides by f, is clipped (by the Module's
  ``on_before_optimizer_step``), and steps through ``scaler.step``, which skips the step when this
  boundary's gradients are not finite; when an earlier boundary of its window was not finite, the
  step is skipped here as well (what GradScaler would do with that gradient) and the window restarts;
* ``scaler.update()`` runs once, after every optimizer.

Window sums are in the parameters' gradient dtype (fp32 for mixed precision's fp32 parameters).
"""

from __future__ import annotations

from typing import Optional

import torch

from sptrack.module.slots import OptimizerSlot


def _all_finite(tensors) -> bool:
    checks = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(checks).all()) if checks else True


class GradScaling:
    """The GradScaler's part of the step state: the scaler and the unscaled frequency windows."""

    def __init__(self) -> None:
        self.scaler: Optional[torch.amp.GradScaler] = None
        #: slot name -> unscaled gradient sum of the boundaries since its last step (None: no grad yet).
        self.windows: dict[str, list[Optional[torch.Tensor]]] = {}
        self._unscaled_any = False

    @property
    def active(self) -> bool:
        """Whether gradients are scaled (fp16 mixed precision with an enabled GradScaler)."""
        return self.scaler is not None and self.scaler.is_enabled()

    def bind(self, scaler: Optional[torch.amp.GradScaler]) -> None:
        """Use the precision plugin's scaler (``trainer.scaler``; None without fp16 loss scaling)."""
        self.scaler = scaler

    def unscale(self, slot: OptimizerSlot, steps: bool) -> bool:
        """Unscale ``slot``'s gradients of this boundary; returns whether its earlier window was finite.

        Not stepping: the gradients go into the window and ``param.grad`` is cleared. Stepping: the
        window is added back and the sum divided by the frequency, ready to clip and step.
        """
        params = slot.params
        if any(p.grad is not None for p in params):
            self.scaler.unscale_(slot.optimizer)
            self._unscaled_any = True
        if not steps:
            window = self.windows.get(slot.name)
            if window is None:
                self.windows[slot.name] = [p.grad for p in params]
            else:
                for i, p in enumerate(params):
                    if p.grad is not None:
                        window[i] = p.grad if window[i] is None else window[i].add_(p.grad)
            for p in params:
                p.grad = None
            return True
        window = self.windows.pop(slot.name, None)
        finite = True
        if window is not None:
            finite = _all_finite(window)
            for p, w in zip(params, window):
                if w is not None:
                    p.grad = w if p.grad is None else p.grad.add_(w)
        frequency = slot.config.frequency
        if frequency > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(frequency)
        return finite

    def step(self, slot: OptimizerSlot, window_finite: bool) -> None:
        """``scaler.step`` (skipped on a non-finite window, or when the optimizer has no gradients)."""
        if window_finite and any(p.grad is not None for p in slot.params):
            self.scaler.step(slot.optimizer)

    def update(self) -> None:
        """The boundary's single ``scaler.update()`` (when any gradient was unscaled: it needs an inf check)."""
        if self._unscaled_any:
            self.scaler.update()
        self._unscaled_any = False

    def state_dict(self, named_window) -> dict:
        """``{slot: {param name: unscaled window sum}}`` via ``named_window(slot_name, tensors)``."""
        return {name: named_window(name, window) for name, window in self.windows.items()}

    def load_windows(self, windows: dict[str, list[Optional[torch.Tensor]]]) -> None:
        """Put restored window sums back (aligned with each slot's parameters)."""
        self.windows = dict(windows)
