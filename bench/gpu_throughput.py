"""DINO training throughput (images/s) and peak memory with a ViT-S/16 at 224 px on one GPU, bf16.

    python bench/gpu_throughput.py [--steps 60] [--warmup 15] [--batch-size 128] [--precision bf16-mixed]
    python bench/gpu_throughput.py --smoke      # tiny CPU configuration: checks the script end to end

The recipe's training step (``recipes/dino.py``) with the project's own classes at ImageNet scale:
student ViT-S/16 (embed 384, depth 12, 6 heads, CLS token) + DINOHead (65536 prototypes, hidden 2048,
bottleneck 256, no norm: the paper's ViT-S settings), an EMATeacher updated by EMAUpdate, DINOLoss,
and MultiCropViews (2 global 224 px + ``--n-local`` local 96 px views) as the dataset's
``gpu_transform`` on synthetic 224 px RGB images (``SyntheticImages``, generated on the host once
and cycled). Two named AdamW optimizers (backbone, head) with warm-up + cosine schedules, under
``sptrack.Trainer(precision=...)``.

Timing: a callback records the time at every training batch end after ``--warmup`` batches (CUDA
synchronised there), so start-up, cuDNN autotuning and the first allocations stay out; throughput =
images (not views) per second over the timed steps. Peak memory: ``torch.cuda.max_memory_allocated``
(and ``max_memory_reserved``). Prints one JSON line (and writes it under ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import sptrack  # noqa: E402
from sptrack.callbacks import EMATeacher, EMAUpdate  # noqa: E402
from sptrack.data import MultiCropViews  # noqa: E402
from sptrack.data.synthetic import SyntheticImages  # noqa: E402
from sptrack.methods import DINOLoss  # noqa: E402
from sptrack.nn import DINOHead, ViT  # noqa: E402

#: ViT-S/16 at 224 px with the DINO paper's head; --smoke shrinks everything to run on a CPU in seconds.
FULL = dict(img=224, local=96, patch=16, embed=384, depth=12, heads=6, out_dim=65536, hidden=2048, bottleneck=256, channels=3)
SMOKE = dict(img=32, local=16, patch=8, embed=32, depth=2, heads=2, out_dim=128, hidden=64, bottleneck=16, channels=3)


class StepClock(pl.Callback):
    """Wall time at the end of every training batch from ``warmup`` on (synchronising CUDA first)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.times: list[float] = []
        self.last_loss = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_loss = outputs["loss"].detach()  # kept as a tensor: reading it would synchronise
        if trainer.global_step >= self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())


def build_module(c: dict, n_global: int, n_local: int, total_steps: int) -> sptrack.Module:
    """The DINO recipe's Module at the sizes of ``c``."""
    student = nn.ModuleDict({
        "backbone": ViT(img_size=c["img"], patch_size=c["patch"], in_chans=c["channels"], embed_dim=c["embed"],
                        depth=c["depth"], num_heads=c["heads"], use_cls_token=True, pos_embed="learned"),
        "head": DINOHead(c["embed"], out_dim=c["out_dim"], hidden_dim=c["hidden"], bottleneck_dim=c["bottleneck"]),
    })

    def forward(self, batch, stage):
        views = batch["views"]
        global_views, local_views = views[:n_global], views[n_global:]
        s_out = self.student["head"](self.student["backbone"](torch.cat(global_views))).chunk(len(global_views))
        if local_views:
            s_out += self.student["head"](self.student["backbone"](torch.cat(local_views))).chunk(len(local_views))
        with torch.no_grad():
            t_out = self.teacher.module["head"](self.teacher.module["backbone"](torch.cat(global_views))).chunk(len(global_views))
        loss = self.dino_loss(list(s_out), list(t_out), self.trainer.global_step / total_steps)
        self.dino_loss.update_center(t_out)
        return {"loss": loss}

    optim = {
        part: {"modules": f"student.{part}", "optimizer": {"type": "AdamW", "lr": 5e-4, "weight_decay": 0.04},
               "scheduler": {"type": "LinearWarmupCosineAnnealingLR"}}
        for part in ("backbone", "head")
    }
    module = sptrack.Module(forward=forward, optim=optim, student=student, teacher=EMATeacher(student, base=0.996),
                            dino_loss=DINOLoss(c["out_dim"]))
    module._print_summary = lambda: None
    return module


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (each gives 2 + n_local views)")
    parser.add_argument("--n-local", type=int, default=6)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--images", type=int, default=1024, help="distinct synthetic images held on the host (cycled)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps: tests the script")
    parser.add_argument("--out", default=None, help="also write the JSON to OUT/gpu_throughput.json")
    args = parser.parse_args(argv)
    c = SMOKE if args.smoke else FULL
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.images, args.n_local = 3, 1, 8, 32, 2
        args.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke on a CPU-only machine")
    common.quiet_lightning()
    torch.manual_seed(0)
    n_steps = args.warmup + args.steps
    views = MultiCropViews(global_size=c["img"], local_size=c["local"], n_global=2, n_local=args.n_local, seed=0)
    data = SyntheticImages(args.images, channels=c["channels"], size=c["img"], seed=0, gpu_transform=views)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=2 if cuda else 0,
                        pin_memory=cuda, persistent_workers=cuda)
    module = build_module(c, 2, args.n_local, n_steps)
    clock = StepClock(args.warmup)
    trainer = sptrack.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=args.precision, max_steps=n_steps,
                              max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False, num_sanity_val_steps=0,
                              callbacks=[EMAUpdate("student", "teacher"), clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - started
    timed = len(clock.times) - 1
    seconds = clock.times[-1] - clock.times[0] if timed > 0 else float("nan")
    n_params = sum(p.numel() for p in module.student.parameters())
    result = {
        "benchmark": "gpu_throughput", "smoke": args.smoke,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "precision": args.precision,
        "model": {**c, "student_params_M": round(n_params / 1e6, 2)},
        "batch_size": args.batch_size, "views": {"global": 2, "local": args.n_local},
        "timed_steps": timed, "warmup_steps": args.warmup, "global_step": trainer.global_step,
        "images_per_s": round(args.batch_size * timed / seconds, 1) if timed > 0 else None,
        "ms_per_step": round(seconds / timed * 1e3, 2) if timed > 0 else None,
        "peak_memory_allocated_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_memory_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "fit_wall_s": round(wall, 1),
        "final_loss": round(float(clock.last_loss), 4),
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
