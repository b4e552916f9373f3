"""Worker for the tracker DDP test: the two-optimizer job under torchrun, tracked in MLflow.

``python -m torch.distributed.run --nproc_per_node=2 tests/track_helpers/ddp_worker.py --uri URI
--experiment NAME --out DIR --ckpt-dir DIR --max-epochs N [--resume CKPT] [--strategy ddp|fsdp2]``. Every rank writes
``DIR/rank<r>.json``: the run id it knows, ``global_step`` and the lrs its optimizers used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for track_helpers

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import sptrack.module  # noqa: E402,F401  (registers strategy="fsdp2")
from sptrack.parallel.process_group import close_default_group
from sptrack.track import MLflowTracker, tracker_callbacks  # noqa: E402
from track_helpers.common import CONFIG, LrRecorder, build_module, make_loader, make_trainer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--strategy", default="ddp", help="ddp or fsdp2")
    args = parser.parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    tracker = MLflowTracker(tracking_uri=args.uri, experiment=args.experiment, system_metrics=False, flush_interval_s=0.5)
    recorder = LrRecorder()
    checkpoints = ModelCheckpoint(dirpath=args.ckpt_dir, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = make_trainer(
        [*tracker_callbacks(tracker, config=CONFIG), recorder, checkpoints],
        max_epochs=args.max_epochs,
        devices=world_size,
        strategy=args.strategy if world_size > 1 else "auto",
        use_distributed_sampler=False,
        enable_checkpointing=True,
    )
    trainer.fit(build_module(), train_dataloaders=make_loader(rank, world_size), ckpt_path=args.resume)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"run_id": tracker.run_id, "global_step": trainer.global_step, "world_size": trainer.world_size,
                   "lrs": dict(recorder.points), "active": tracker.active}, f)
    print(f"[rank {rank}] run_id={tracker.run_id} global_step={trainer.global_step}", flush=True)
    # Left to interpreter exit, gloo's threads sometimes abort a rank after its work succeeded.
    close_default_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
