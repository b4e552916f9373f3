"""Worker for tests/test_sync_policy.py: the sync policy at epoch ends and an exact 2-rank resume.

``python -m torch.distributed.run --nproc_per_node=2 tests/dist/sync_worker.py --strategy ddp|fsdp2
--out DIR``. 7 micro-batches per epoch per rank, ``accumulate_grad_batches=3``, 2 epochs, head
frequency 2: epoch 1 ends in the middle of a window, so its checkpoint holds an unfinished window.
``accumulate_grad_batches=3``: two unsynchronised micro-batches in a row (Lightning resets DDP's
sync flag after every training step, so a policy that only writes changes would fail here).
Writes ``DIR/rank<r>.pt`` with the micro-batches whose backward synchronised (DDP comm hook or FSDP2
reduce-scatter count) and the final parameters of the straight run, of the run resumed from the
epoch-1 checkpoint and (DDP) of the run resumed from a checkpoint written after micro-batch 4, where
each rank holds its own unsynchronised gradients (the resumed loader skips the 4 batches trained).
"""

from __future__ import annotations

import argparse
import os
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sptrack
import sptrack.module  # noqa: F401  (registers strategy="fsdp2")
from sptrack.parallel.process_group import close_default_group
from sptrack.parallel.fsdp2 import to_full_tensor

ACCUMULATE = 3
PER_RANK_BATCHES = 7  # the head (frequency 2) steps at micro-batch 6, before the epoch-1 checkpoint
#: Every fit's Trainer stays referenced until the process group is destroyed: collecting one earlier
#: (its FSDP2 device mesh and gloo sub-groups) can abort the process ("terminate called ...").
TRAINERS: list = []
MID_EPOCH_SAVE_AT = 4  # micro-batch after which a checkpoint is written mid-window (and mid-epoch)


def forward_fn(module, batch, stage):
    x, y = batch["x"], batch["y"]
    return {"loss": F.mse_loss(module.head(module.backbone(x)), y)}


def build() -> sptrack.Module:
    torch.manual_seed(0)
    return sptrack.Module(
        forward=forward_fn,
        optim={
            "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9}},
            "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 1e-2}, "frequency": 2},
        },
        backbone=nn.Sequential(nn.Linear(5, 8), nn.Tanh()),
        head=nn.Linear(8, 2),
    )


class DictLoader:
    """Wraps a TensorDataset loader into dict batches; ``skip`` batches are left out of its first epoch."""

    def __init__(self, loader, skip: int = 0):
        self.loader = loader
        self.skip = skip

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, (x, y) in enumerate(self.loader):
            if i >= skip:
                yield {"x": x, "y": y}


def loader(rank: int, skip: int = 0) -> DictLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2 * PER_RANK_BATCHES * 2, 5, generator=g), torch.randn(2 * PER_RANK_BATCHES * 2, 2, generator=g)
    return DictLoader(DataLoader(TensorDataset(x[rank::2], y[rank::2]), batch_size=2, shuffle=False), skip)


class Probe(pl.Callback):
    """Counts gradient collectives per micro-batch; saves a checkpoint mid-window once."""

    def __init__(self, out: str, save_mid_epoch: bool):
        self.comm: list[int] = []
        self.out = out
        self.save_mid_epoch = save_mid_epoch

    def on_train_start(self, trainer, module):
        from torch.nn.parallel import DistributedDataParallel

        record = lambda: self.comm.append(module.step_state.micro_batches + 1)  # noqa: E731
        if isinstance(trainer.strategy.model, DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting_hook(state, bucket):  # DDP checks the parameter names
                record()
                return allreduce_hook(state, bucket)

            trainer.strategy.model.register_comm_hook(None, counting_hook)
        else:
            original = torch.distributed.reduce_scatter_single

            def counted(*args, **kwargs):
                record()
                return original(*args, **kwargs)

            torch.distributed.reduce_scatter_single = counted
            self._restore = lambda: setattr(torch.distributed, "reduce_scatter_single", original)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.save_mid_epoch and module.step_state.micro_batches == MID_EPOCH_SAVE_AT:
            trainer.save_checkpoint(os.path.join(self.out, "mid.ckpt"))

    def on_train_end(self, trainer, module):
        if hasattr(self, "_restore"):
            self._restore()


def fit(strategy: str, rank: int, out: str, ckpt_path=None, save_mid_epoch: bool = False, skip: int = 0):
    module = build()
    probe = Probe(out, save_mid_epoch)
    callbacks = [probe]
    if ckpt_path is None:
        callbacks.append(ModelCheckpoint(dirpath=out, filename="epoch{epoch}", save_top_k=-1, every_n_epochs=1,
                                         save_on_train_epoch_end=True, auto_insert_metric_name=False))
    trainer = sptrack.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, accumulate_grad_batches=ACCUMULATE,
        use_distributed_sampler=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=callbacks, enable_checkpointing=ckpt_path is None,
    )
    trainer.fit(module, train_dataloaders=loader(rank, skip), ckpt_path=ckpt_path)
    TRAINERS.append(trainer)
    params = {n: to_full_tensor(p.detach()).clone() for n, p in module.named_parameters()}
    return params, probe


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    rank = int(os.environ["RANK"])
    straight, probe = fit(args.strategy, rank, args.out, save_mid_epoch=args.strategy == "ddp")
    resumed, probe_resumed = fit(args.strategy, rank, args.out, ckpt_path=os.path.join(args.out, "epoch0.ckpt"))
    result = {"straight": straight, "resumed": resumed, "comm": probe.comm, "comm_resumed": probe_resumed.comm}
    if args.strategy == "ddp":
        mid = torch.load(os.path.join(args.out, "mid.ckpt"), weights_only=False)["sptrack"]
        result["mid_per_rank_keys"] = [sorted(p) for p in mid["pending_grads_per_rank"]]
        result["mid_ranks_differ"] = any(not torch.equal(a, mid["pending_grads_per_rank"][1][n])
                                         for n, a in mid["pending_grads_per_rank"][0].items())
        result["resumed_mid"], _ = fit(args.strategy, rank, args.out, ckpt_path=os.path.join(args.out, "mid.ckpt"),
                                       skip=MID_EPOCH_SAVE_AT)
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    # Left to interpreter exit, gloo's threads sometimes abort a rank after its work succeeded.
    close_default_group()


if __name__ == "__main__":
    code = main()
    # With FSDP2 and its device-mesh subgroups, a rank still aborted at interpreter teardown about once in
    # three full suites ("terminate called without an active exception", a joinable C++ thread destroyed by
    # a static destructor), after the group was closed and its result saved. Everything this worker reports
    # is on disk by now: leave without the teardown, so the test judges the results and not the exit race.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
