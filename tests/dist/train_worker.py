"""Worker for tests/test_distributed.py: one small two-optimizer training run.

Launched with ``python -m torch.distributed.run --nproc_per_node=2 tests/dist/train_worker.py
--strategy ddp|fsdp2|fsdp2-explicit --out DIR [--accumulate N] [--sync-always]``, each rank trains on
its own deterministic half of every global batch (in N micro-batches with ``--accumulate N``) and
writes ``DIR/rank<r>.pt`` (``fsdp2-explicit`` passes ``FSDP2Strategy(data_parallel_size=WORLD_SIZE)``
instead of the string ``"fsdp2"``). Every gradient collective of the training backward passes is
recorded with the micro-batch it ran in: DDP all-reduces through a DDP communication hook, FSDP2
reduce-scatters by counting ``torch.distributed.reduce_scatter_single``. ``--sync-always`` turns the
once-per-boundary sync policy off (every micro-batch synchronises, as before it existed). Without torchrun
(WORLD_SIZE unset) it is the single-process reference run on the whole global batches, which the
distributed runs must reproduce; both use the same model, data and settings defined here.
"""

from __future__ import annotations

import argparse
import os
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset

import sptrack
import sptrack.module  # noqa: F401  (registers strategy="fsdp2")
from sptrack.parallel.process_group import close_default_group
from sptrack.parallel.fsdp2 import to_full_tensor

IN_DIM, HIDDEN, OUT_DIM = 6, 16, 3
NUM_SAMPLES = 40  # 5 global batches of 8 per epoch: the head's frequency-2 cycle spans the epoch end
GLOBAL_BATCH = 8
MAX_EPOCHS = 2
BACKBONE_CLIP = 0.35  # per-optimizer clip by norm: active at some steps, not at others
TRAINER_CLIP = 0.05  # Trainer-level clip by value, inherited by the head optimizer
SEED = 1234


class SyntheticDataset(Dataset):
    """Deterministic dict samples ``{"x": float[IN_DIM], "y": float[OUT_DIM], "index": int}``."""

    def __init__(self, n: int = NUM_SAMPLES):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, IN_DIM, generator=g)
        w = torch.randn(IN_DIM, OUT_DIM, generator=g)
        self.y = torch.tanh(self.x @ w) + 0.1 * torch.randn(n, OUT_DIM, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


def shard_indices(rank: int, world_size: int, n: int = NUM_SAMPLES, global_batch: int = GLOBAL_BATCH) -> list[int]:
    """Rank ``rank``'s samples, in order: slice ``[r*B, (r+1)*B)`` of every global batch of ``world_size*B``."""
    per_rank = global_batch // world_size
    out = []
    for start in range(0, n, global_batch):
        out.extend(range(start + rank * per_rank, start + (rank + 1) * per_rank))
    return out


def make_loader(rank: int, world_size: int, accumulate: int = 1) -> DataLoader:
    """Rank ``rank``'s samples in micro-batches of ``GLOBAL_BATCH / (world_size * accumulate)``."""
    dataset = SyntheticDataset()
    subset = torch.utils.data.Subset(dataset, shard_indices(rank, world_size))
    batch_size = GLOBAL_BATCH // world_size // accumulate
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, drop_last=False)


def forward_fn(module, batch: dict, stage: str) -> dict:
    module.seen_indices.append(batch["index"].tolist())
    pred = module.head(module.backbone(batch["x"]))
    return {"loss": F.mse_loss(pred, batch["y"])}  # a mean: DDP/FSDP gradient averaging matches one process


def build_module() -> sptrack.Module:
    torch.manual_seed(SEED)
    backbone = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
    head = nn.Linear(HIDDEN, OUT_DIM)
    module = sptrack.Module(
        forward=forward_fn,
        optim={
            "backbone": {
                "modules": "backbone",
                "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
                "frequency": 1,
                "gradient_clip_val": BACKBONE_CLIP,
                "gradient_clip_algorithm": "norm",
            },
            "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 1e-2}, "frequency": 2},
        },
        backbone=backbone,
        head=head,
    )
    module.seen_indices = []
    return module


def full_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) copies of every parameter; a collective under FSDP2 (all ranks must call it)."""
    return {name: to_full_tensor(p.detach()).cpu().clone() for name, p in module.named_parameters()}


class Recorder(pl.Callback):
    """Records pre-clip gradient statistics and, at the end of training, the final state.

    Uses only public API: ``trainer.optimizers`` is in ``optim`` declaration order, like
    ``Module.optimizer_summary()``.
    """

    def __init__(self):
        self.pre_clip_norms: list[float] = []  # backbone: global L2 norm of its gradients
        self.head_pre_clip_max: list[float] = []  # head: largest |gradient| entry
        self.comm_micro_batches: list[int] = []  # 1-based micro-batch of every gradient collective
        self.comm_kind = None
        self.result: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        def record():
            self.comm_micro_batches.append(pl_module.step_state.micro_batches + 1)

        ddp = trainer.strategy.model
        if isinstance(ddp, DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting_hook(state, bucket):
                record()
                return allreduce_hook(state, bucket)

            ddp.register_comm_hook(torch.distributed.group.WORLD, counting_hook)
            self.comm_kind = "ddp_allreduce"
        elif trainer.world_size > 1:
            reduce_scatter = torch.distributed.reduce_scatter_single

            def counting_reduce_scatter(*args, **kwargs):
                record()
                return reduce_scatter(*args, **kwargs)

            # FSDP2 looks the function up on torch.distributed at each call (_fsdp_collectives.py).
            torch.distributed.reduce_scatter_single = counting_reduce_scatter
            self.comm_kind = "fsdp2_reduce_scatter"

    @staticmethod
    def _name(trainer, pl_module, optimizer) -> str:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        return pl_module.optimizer_summary()[index]["name"]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Callbacks run before the Module's own hook, so these are the gradients before clipping.
        # to_full_tensor is a collective under FSDP2; every rank runs this hook.
        grads = [to_full_tensor(p.grad) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self._name(trainer, pl_module, optimizer) == "backbone":
            self.pre_clip_norms.append(sum(float(g.double().pow(2).sum()) for g in grads) ** 0.5)
        else:
            self.head_pre_clip_max.append(max(float(g.abs().max()) for g in grads))

    def on_train_end(self, trainer, pl_module) -> None:
        summary = pl_module.optimizer_summary()
        head = trainer.optimizers[[row["name"] for row in summary].index("head")]
        adam_steps = sorted({int(head.state[p]["step"]) for g in head.param_groups for p in g["params"]})
        self.result = {
            "params": full_params(pl_module),
            "global_step": int(trainer.global_step),
            "head_adam_steps": adam_steps,
            "pre_clip_norms": list(self.pre_clip_norms),
            "head_pre_clip_max": list(self.head_pre_clip_max),
            "seen_indices": list(pl_module.seen_indices),
            "sharded": any(isinstance(p, DTensor) for p in pl_module.parameters()),
            "strategy": type(trainer.strategy).__name__,
            "world_size": int(trainer.world_size),
            "comm_micro_batches": list(self.comm_micro_batches),
            "comm_kind": self.comm_kind,
            "clip": [
                (row["name"], float(row["gradient_clip_val"]), str(getattr(row["gradient_clip_algorithm"], "value", row["gradient_clip_algorithm"])))
                for row in summary
            ],
        }


def run(strategy: str = "auto", devices: int = 1, rank: int = 0, world_size: int = 1, accumulate: int = 1,
        sync_always: bool = False) -> dict:
    """Train the module; returns the Recorder's result (also holds the initial parameters)."""
    if strategy == "fsdp2-explicit":  # FSDP2Strategy with the data-parallel size spelled out
        from sptrack.parallel.fsdp2 import FSDP2Strategy

        strategy = FSDP2Strategy(data_parallel_size=world_size)
    module = build_module()
    module.step_state.sync.always = sync_always
    initial = full_params(module)
    recorder = Recorder()
    trainer = sptrack.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=MAX_EPOCHS,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=TRAINER_CLIP,
        gradient_clip_algorithm="value",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[recorder],
    )
    loader = make_loader(rank, world_size, accumulate)
    trainer.fit(module, train_dataloaders=loader)
    return {**recorder.result, "initial": initial, "num_batches_per_epoch": len(loader), "accumulate": accumulate}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--out", required=True)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--sync-always", action="store_true")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size == 1:
        result = run("auto", 1, 0, 1)
    else:
        result = run(args.strategy, world_size, rank, world_size, args.accumulate, args.sync_always)
    os.makedirs(args.out, exist_ok=True)
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    print(f"[rank {rank}] done: global_step={result['global_step']} strategy={result['strategy']}", flush=True)
    # Left to interpreter exit, gloo's threads sometimes abort a rank after its work succeeded.
    close_default_group()


if __name__ == "__main__":
    sys.exit(main())
