"""Gradient communication under DDP with accumulation: one sync per boundary vs one per micro-batch.

    python bench/comm.py [--rounds N] [--boundaries B] [--accumulate 4] [--quick] [--out DIR]

Two processes (``torch.distributed.run``, gloo, one torch thread each) train an MLP
256->1024->1024->1024->10 (2.4 M parameters, several DDP buckets) through ``sptrack.Module`` with
``accumulate_grad_batches=4`` and two optimizers (AdamW; SGD with frequency 2). Two variants, in
interleaved rounds after one untimed warm-up of each:

* ``every_micro_batch`` (before): the sync policy switched off (``module.step_state.sync.always``),
  so every micro-batch's backward all-reduces, as sptrack did before;
* ``per_boundary`` (after): only the backward of a micro-batch that ends a window all-reduces.

Reported: all-reduces per boundary counted with a DDP communication hook (wrapping torch's
``allreduce_hook``; goal: one per bucket per boundary), the buckets, and the wall time per boundary
on rank 0 (from the start of boundary 2, after DDP's first-iteration bucket rebuild, to the end of
the last), as the median of per-round ratios after/before with quartiles and min-max. Both variants'
final weights must agree (allclose: the sums are averaged in a different order). Writes
``DIR/comm.json``. On a shared machine the times are indicative; the counts are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()
SIZES = (256, 1024, 1024, 1024, 10)
MICRO_BATCH = 32
VARIANTS = ("every_micro_batch", "per_boundary")


def _build():
    import torch
    import torch.nn.functional as F
    from torch import nn

    import sptrack

    torch.manual_seed(0)
    layers = []
    for a, b in zip(SIZES[:-2], SIZES[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]

    def forward(module, batch, stage):
        return {"loss": F.cross_entropy(module.head(module.backbone(batch["x"])), batch["y"])}

    return sptrack.Module(
        forward=forward,
        optim={"backbone": {"modules": "backbone", "optimizer": {"type": "AdamW", "lr": 1e-4}},
               "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": 1e-2}, "frequency": 2}},
        backbone=nn.Sequential(*layers), head=nn.Linear(SIZES[-2], SIZES[-1]),
    )


class _Batches:
    """``n`` dict micro-batches, different on each rank, the same for every trial."""

    def __init__(self, n: int, rank: int):
        import torch

        g = torch.Generator().manual_seed(100 + rank)
        self.items = [{"x": torch.randn(MICRO_BATCH, SIZES[0], generator=g), "y": torch.randint(0, SIZES[-1], (MICRO_BATCH,), generator=g)}
                      for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def _trial(variant: str, batches, accumulate: int) -> dict:
    """One fit of ``len(batches)`` micro-batches; returns time per boundary and all-reduce counts."""
    import lightning.pytorch as pl
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    module = _build()
    module.step_state.sync.always = variant == "every_micro_batch"
    calls: list[int] = []
    marks: dict = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            def hook(state, bucket):  # DDP checks these parameter names
                calls.append(pl_module.step_state.micro_batches // accumulate)
                return allreduce_hook(state, bucket)

            trainer.strategy.model.register_comm_hook(None, hook)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == accumulate:  # boundary 2 starts: DDP's first-iteration set-up is behind us
                marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_train_end(self, trainer, pl_module):
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    import sptrack

    trainer = sptrack.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, accumulate_grad_batches=accumulate,
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Probe()])
    trainer.fit(module, train_dataloaders=batches)
    boundaries = len(batches) // accumulate
    timed = boundaries - 1
    per_boundary = [calls.count(b) for b in range(boundaries)]  # index = boundaries completed before the call
    return {
        "epoch_s": marks["end"] - marks["start"],
        "ms_per_boundary": (marks["end"] - marks["start"]) / timed * 1e3,
        "cpu_ms_per_boundary": (marks["cpu_end"] - marks["cpu"]) / timed * 1e3,
        "allreduces_per_boundary": per_boundary,
        "state": common.snapshot(module),
    }


def worker(args) -> None:
    """Both ranks run the same interleaved trials; rank 0 summarises and writes the JSON."""
    import torch.distributed as dist

    common.setup_threads(1)
    common.quiet_lightning()
    import lightning.pytorch  # noqa: F401 - import first so quiet_lightning can override its log level

    common.quiet_lightning()
    rank = int(os.environ["RANK"])
    batches = _Batches(args.boundaries * args.accumulate, rank)
    log = print if rank == 0 else (lambda *_: None)
    runs = common.interleave({v: (lambda v=v: _trial(v, batches, args.accumulate)) for v in VARIANTS}, args.rounds, log=log)
    if rank == 0:
        summarise(runs, args)
    # Destroyed here, after a barrier: left to interpreter exit, gloo's threads sometimes abort a rank.
    dist.barrier()
    dist.destroy_process_group()


def summarise(runs: dict, args) -> None:
    """Rank 0: check both variants did the same work, write comm.json and print it."""
    diff = max(common.assert_same_work(a["state"], b["state"], f"round {i}", rtol=1e-4, atol=1e-5)
               for i, (a, b) in enumerate(zip(runs["per_boundary"], runs["every_micro_batch"])))
    counts = {v: runs[v][0]["allreduces_per_boundary"] for v in VARIANTS}
    # DDP rebuilds its buckets after the first iteration (in the order gradients became ready).
    buckets = counts["per_boundary"][-1]
    result = {
        "model": "MLP " + "->".join(map(str, SIZES)), "params": sum(p.numel() for p in _build().parameters()),
        "micro_batch": MICRO_BATCH, "accumulate": args.accumulate, "boundaries": args.boundaries, "rounds": args.rounds,
        "processes": 2, "backend": "gloo", "threads_per_process": 1, "buckets": buckets,
        "allreduces_per_boundary": {v: counts[v] for v in VARIANTS},
        "ms_per_boundary": {v: common.spread([r["ms_per_boundary"] for r in runs[v]]) for v in VARIANTS},
        "cpu_ms_per_boundary": {v: common.spread([r["cpu_ms_per_boundary"] for r in runs[v]]) for v in VARIANTS},
        "ratio_after_before": common.spread([a["ms_per_boundary"] / b["ms_per_boundary"]
                                             for a, b in zip(runs["per_boundary"], runs["every_micro_batch"])]),
        "max_abs_diff": diff,
    }
    result["markdown"] = markdown(result)
    path = common.write_json("comm", result, Path(args.out))
    print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
    print(f"wrote {path}", flush=True)


def markdown(r: dict) -> str:
    """The RESULTS.md section."""
    before, after = (r["ms_per_boundary"][v] for v in VARIANTS)
    q = r["ratio_after_before"]
    counts = r["allreduces_per_boundary"]
    first, later = ({v: counts[v][0] for v in VARIANTS}, {v: sorted(set(counts[v][1:])) for v in VARIANTS})
    return "\n".join([
        "## Gradient communication (DDP, accumulation)", "",
        f"2 processes (gloo, 1 thread each), {r['model']} ({r['params'] / 1e6:.1f} M parameters, {r['buckets']} DDP buckets), "
        f"micro-batch {r['micro_batch']}, accumulate_grad_batches={r['accumulate']}, {r['boundaries']} boundaries per trial, "
        f"{r['rounds']} interleaved rounds. All-reduces counted with a DDP comm hook (boundary 1 runs before DDP rebuilds its "
        "buckets); times on rank 0 from boundary 2 on, on a shared machine: indicative.", "",
        "| variant | all-reduces at boundary 1 | per later boundary | ms per boundary (median, IQR) |", "| --- | ---: | ---: | ---: |",
        f"| sync every micro-batch (before) | {first['every_micro_batch']} | {', '.join(map(str, later['every_micro_batch']))} | "
        f"{before['median']:.1f} ({before['q1']:.1f}–{before['q3']:.1f}) |",
        f"| sync per boundary (after) | {first['per_boundary']} | {', '.join(map(str, later['per_boundary']))} | "
        f"{after['median']:.1f} ({after['q1']:.1f}–{after['q3']:.1f}) |", "",
        f"after/before wall time per boundary: **{q['median']:.3f}×** (IQR {q['q1']:.3f}–{q['q3']:.3f}, min–max {q['min']:.3f}–{q['max']:.3f}); "
        f"final weights agree to {r['max_abs_diff']:.1e}.", "",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 7, --quick 3")
    parser.add_argument("--boundaries", type=int, default=None, help="per trial (default 16, --quick 6)")
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.boundaries = args.boundaries or (6 if args.quick else 16)
    if args.worker:
        worker(args)
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1",
           f"--master_port={port}", __file__, "--worker", "--rounds", str(args.rounds), "--boundaries", str(args.boundaries),
           "--accumulate", str(args.accumulate), "--out", str(Path(args.out).resolve())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, env=env).returncode)


if __name__ == "__main__":
    main()
