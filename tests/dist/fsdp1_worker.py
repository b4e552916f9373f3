"""Worker for tests/test_distributed.py: a fit under Lightning's FSDP1 strategy must be refused by sptrack.

Lightning refuses ``strategy="fsdp"`` (and ``FSDPStrategy()``) without CUDA before any sptrack code
runs; its check compares ``type(strategy) is FSDPStrategy``, so a trivial subclass gets through on
CPU and the fit reaches ``Module.setup``, where sptrack's ``reject_fsdp1`` must raise. Run as a plain
single process (it initialises a process group, so it stays out of the pytest process). Prints one
``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy

from train_worker import build_module, make_loader


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP1 strategy, unchanged except that its type passes the GPU-only check."""


def main() -> None:
    module = build_module()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=CPUFSDPStrategy(),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = {"error_type": None, "message": None, "raised_in": [], "batches_run": None}
    try:
        trainer.fit(module, train_dataloaders=make_loader(0, 1))
    except Exception as err:  # noqa: BLE001 - reported to the test
        frames = traceback.extract_tb(err.__traceback__)
        result["error_type"] = type(err).__name__
        result["message"] = str(err)
        result["raised_in"] = ["/".join(Path(f.filename).parts[-2:]) + ":" + f.name for f in frames]
        result["traceback"] = "".join(traceback.format_exception(err))
    result["batches_run"] = len(module.seen_indices)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
