"""Workload A of the overhead benchmark: the issue's MLP with two optimizers, and its hand-written loop.

An MLP 256 -> 512 -> 512 -> 512 -> 1 on batches of 64 random inputs regressed onto random targets
(MSE). The ``backbone`` (three 512-wide layers) trains with AdamW every step under a cosine schedule
over the run; the ``head`` (512 -> 1) with SGD + momentum every 2nd step on the mean gradient of its
two steps (sptrack's ``frequency=2`` semantics). Batches are built once, before timing, so the
benchmarks time the training step and the framework around it, not data generation.

Torch-only, so that the reference library's environment (another torch) can import it too.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

IN_DIM, WIDTH, BATCH = 256, 512, 64
ADAMW_LR, SGD_LR, SGD_MOMENTUM, HEAD_FREQUENCY = 1e-3, 1e-2, 0.9, 2


def build_model(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` with the same initial weights for every call with the same seed."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Linear(IN_DIM, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU()
    )
    head = nn.Linear(WIDTH, 1)
    return backbone, head


class Batches:
    """A fixed, re-iterable sequence of pre-collated dict batches ``{"x": (64, 256), "y": (64, 1)}``.

    Not a list: Lightning would read a list as several dataloaders. Iterating yields fresh dicts
    (shallow copies), because sptrack.Module adds ``batch_idx`` to the batch it receives.
    """

    def __init__(self, steps: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self._batches = [
            {"x": torch.randn(BATCH, IN_DIM, generator=g), "y": torch.randn(BATCH, 1, generator=g)} for _ in range(steps)
        ]

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        return (dict(b) for b in self._batches)


def loss_fn(backbone: nn.Module, head: nn.Module, batch: dict) -> torch.Tensor:
    """The joint loss every variant computes."""
    return F.mse_loss(head(backbone(batch["x"])), batch["y"])


def hand_loop(backbone: nn.Module, head: nn.Module, batches: Batches) -> dict:
    """The physical limit: plain PyTorch doing exactly what sptrack's declaration asks for.

    Returns ``epoch_s`` (the loop over the batches), ``epoch_cpu_s`` (its CPU time) and ``fit_s``
    (plus building the optimizers).
    """
    started = time.perf_counter()
    adamw = torch.optim.AdamW(backbone.parameters(), lr=ADAMW_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=len(batches))
    sgd = torch.optim.SGD(head.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
    head_params = list(head.parameters())
    backbone.train()
    head.train()
    loop_start, cpu_start = time.perf_counter(), time.process_time()
    for i, batch in enumerate(batches):
        loss = loss_fn(backbone, head, batch)
        loss.backward()
        adamw.step()
        adamw.zero_grad(set_to_none=True)
        schedule.step()
        if (i + 1) % HEAD_FREQUENCY == 0:
            for p in head_params:
                p.grad.div_(HEAD_FREQUENCY)  # step on the mean gradient of the window
            sgd.step()
            sgd.zero_grad(set_to_none=True)
    ended, cpu = time.perf_counter(), time.process_time() - cpu_start
    return {"epoch_s": ended - loop_start, "epoch_cpu_s": cpu, "fit_s": ended - started}
