"""The DINO recipe's ``vit_s16_imagenet`` preset, a few training steps on generated photos read from tar shards.

    python bench/preset_steps.py [--out DIR]                            # CPU: batch 8, 2 + 3 steps
    python bench/preset_steps.py --device cuda --batch-size 128 --steps 40 --warmup 10 --workers 12 --precision bf16-mixed

What a user's run does, end to end: ``--images`` 500 x 375 JPEGs written by the benchmark, converted
by ``sptrack.data.make_shards``, read as ``data.dataset=shards`` (views cut from the originals in
``--workers`` loader workers, uint8 to the device), the recipe's own Module (ViT-S/16, 2 x 224 +
10 x 96 crops, 65,536 prototypes) and callbacks, under ``sptrack.Trainer``. Validation is off.

Per timed step (after ``--warmup``): the step time (batch end to batch end, CUDA synchronised),
and the part of it spent waiting for data: from one batch's end to the next one's start, which
holds the loader's fetch, the host-to-device copy and the device-side view photometry. Peak
memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set on a CPU.
Writes ``DIR/preset_steps_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from loader import write_photos  # noqa: E402


class StepTimes(pl.Callback):
    """Batch start and end times of every training step (CUDA synchronised at the end)."""

    def __init__(self):
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--images", type=int, default=None, help="photos to write (default: enough for the steps, at least 64)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    threads = common.setup_threads(2 if args.device == "cpu" else (os.cpu_count() or 1))
    common.quiet_lightning()
    import sptrack
    from sptrack.data.make_shards import make_shards
    from sptrack.recipe.config import apply_overrides
    from sptrack.recipe.loading import load_recipe
    from sptrack.recipe.presets import apply_preset, find_preset

    steps = args.warmup + args.steps
    count = args.images or max(64, int(1.3 * steps * args.batch_size) + 16)
    work = Path(tempfile.mkdtemp(prefix="sptrack-preset-"))
    started = time.perf_counter()
    write_photos(work / "photos", count)
    make_shards(work / "photos", work / "shards", shard_size=256, heldout_fraction=0.05)
    prepared = time.perf_counter() - started
    print(f"wrote {count} photos and their shards in {prepared:.1f} s", flush=True)

    recipe = load_recipe("dino")
    cfg = recipe.default_config()
    apply_preset(cfg, find_preset(recipe.presets, "vit_s16_imagenet", "dino"))
    apply_overrides(cfg, ["data.dataset=shards", f"data.root={work / 'shards'}", f"data.batch_size={args.batch_size}",
                          f"data.num_workers={args.workers}", f"trainer.output_dir={work / 'runs'}"])
    cfg.check()
    torch.manual_seed(0)
    experiment = recipe.build_experiment(cfg)
    clock = StepTimes()
    trainer = sptrack.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=args.precision,
                              max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                              callbacks=[*experiment.callbacks, clock])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fit_started = time.perf_counter()
    trainer.fit(experiment.module, experiment.train_loader)
    fit_wall = time.perf_counter() - fit_started
    w = args.warmup
    step = [b - a for a, b in zip(clock.ends[w - 1 : -1], clock.ends[w:])]
    wait = [s - e for e, s in zip(clock.ends[w - 1 : -1], clock.starts[w:])]
    n_params = sum(p.numel() for p in experiment.module.student.parameters())
    result = {
        "benchmark": "preset_steps", "preset": "dino vit_s16_imagenet", "source": "shards (views cut in the loader workers)",
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu, {threads} torch threads",
        "torch": torch.__version__, "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers,
        "views": "2 x 224 + 10 x 96", "student_params_M": round(n_params / 1e6, 2),
        "timed_steps": len(step), "warmup_steps": w, "global_step": trainer.global_step,
        "s_per_step_median": round(statistics.median(step), 3),
        "images_per_s": round(args.batch_size / statistics.median(step), 1),
        "data_wait_fraction": round(sum(wait) / sum(step), 3),
        "peak_memory_GiB": round((torch.cuda.max_memory_allocated() if args.device == "cuda"
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2),
        "fit_wall_s": round(fit_wall, 1), "prepare_s": round(prepared, 1),
        "final_loss": round(float(trainer.callback_metrics["train/loss"]), 4),
    }
    print(json.dumps(result), flush=True)
    out = common.write_json(f"preset_steps_{args.device}", result, Path(args.out))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
