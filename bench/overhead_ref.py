"""Workload A through the reference library's Module (``stable_pretraining.Module``), in its own environment.

    /work/venv-ref/bin/python bench/overhead_ref.py [--steps 200] [--rounds 10] [--threads 1]

Run by ``bench/overhead.py``; prints round lines and, last, one JSON line. The reference library
pins another torch, so it cannot share sptrack's environment; the ratio is therefore taken against
the same hand loop (:mod:`mlp_workload`) run in *this* process, interleaved round by round.

Its optimizer declaration is the same as sptrack's, except that with several optimizers it requires
a scheduler for each one: the head gets ``ConstantLR(factor=1)``, which leaves the lr unchanged
(the final weights are still compared with the hand loop's).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mlp_workload import (  # noqa: E402
    ADAMW_LR,
    HEAD_FREQUENCY,
    SGD_LR,
    SGD_MOMENTUM,
    Batches,
    build_model,
    hand_loop,
    loss_fn,
)


def _forward(self, batch, stage):
    return {"loss": loss_fn(self.backbone, self.head, batch)}


def run_reference(batches: Batches) -> dict:
    """One epoch of workload A through the reference Module and a plain Lightning Trainer."""
    import lightning.pytorch as pl
    import stable_pretraining as spt

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds, self.cpu = time.perf_counter() - self.start, time.process_time() - self.cpu_start

    backbone, head = build_model()
    optim = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "AdamW", "lr": ADAMW_LR},
                     "scheduler": {"type": "CosineAnnealingLR", "T_max": len(batches)}, "interval": "step"},
        "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": SGD_LR, "momentum": SGD_MOMENTUM},
                 "scheduler": {"type": "ConstantLR", "factor": 1.0, "total_iters": 1}, "frequency": HEAD_FREQUENCY},
    }
    started = time.perf_counter()
    module = spt.Module(forward=_forward, optim=optim, backbone=backbone, head=head, hparams={})
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, batches)
    return {"epoch_s": timer.seconds, "epoch_cpu_s": timer.cpu, "fit_s": time.perf_counter() - started, "state": common.snapshot(backbone, head)}


def run_hand(batches: Batches) -> dict:
    """The hand loop of :mod:`mlp_workload`, in this environment's torch."""
    backbone, head = build_model()
    return {**hand_loop(backbone, head, batches), "state": common.snapshot(backbone, head)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    common.setup_threads(args.threads)
    import lightning.pytorch  # noqa: F401
    import stable_pretraining  # noqa: F401 - its import-time set-up stays out of the timings

    common.quiet_lightning()
    logging.disable(logging.WARNING)  # the library logs its configuration at every Module/fit
    try:
        from loguru import logger as _loguru

        _loguru.remove()
    except ImportError:
        pass
    batches = Batches(args.steps)
    runs = common.interleave({"hand": lambda: run_hand(batches), "reference": lambda: run_reference(batches)}, args.rounds)
    diff = max(common.assert_same_work(r["state"], h["state"], f"reference round {i}")
               for i, (r, h) in enumerate(zip(runs["reference"], runs["hand"])))
    out = {
        "library": f"stable-pretraining {getattr(stable_pretraining, '__version__', '?')}",
        "torch": common.torch.__version__,
        "threads": common.torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": args.steps,
        "ms_per_step": common.spread([r["epoch_s"] / args.steps * 1e3 for r in runs["reference"]]),
        "hand_ms_per_step": common.spread([r["epoch_s"] / args.steps * 1e3 for r in runs["hand"]]),
        "overhead_us_per_step": common.spread([(r["epoch_cpu_s"] - h["epoch_cpu_s"]) / args.steps * 1e6 for r, h in zip(runs["reference"], runs["hand"])]),
        "epoch_ratio": common.paired_ratios(runs, "hand", "epoch_s")["reference"],
        "epoch_cpu_ratio": common.paired_ratios(runs, "hand", "epoch_cpu_s")["reference"],
        "fit_ratio": common.paired_ratios(runs, "hand", "fit_s")["reference"],
        "max_abs_diff_vs_hand": diff,
    }
    sys.stdout.flush()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
