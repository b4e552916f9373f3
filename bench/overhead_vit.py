"""Workload B of the overhead benchmark: the DINO recipe's training step (``recipes/dino.py``).

The recipe's model at its defaults: student = ViT (28x28, patch 4, embed 64, depth 4, 4 heads,
mean-pooled) + DINOHead (1024 prototypes, hidden 256, bottleneck 64, BatchNorm), an EMA teacher
(base momentum 0.99, cosine to 1), DINOLoss (temperatures 0.1 / 0.04, centre momentum 0.9), and
MultiCropViews (2 global 28 px + 4 local 12 px views, seeded) applied as the dataset's
``gpu_transform``; batches of 64 synthetic 28 px images. Two AdamW optimizers (backbone, head; lr
5e-4, weight decay 0.04) with the recipe's default warm-up + cosine schedule.

Simplified, identically in both variants: no probe/kNN/RankMe callbacks and no ``self.log``
(the hand loop has no logging), and the loss's schedule position is ``step / total`` with a
precomputed total. The sptrack variant uses the real mechanisms: ``gpu_transform`` on the
dataset, ``EMAUpdate`` callback, named optimizers with a scheduler declaration.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import sptrack
from common import snapshot
from overhead_mlp import fit_timed
from sptrack.callbacks import EMATeacher, EMAUpdate
from sptrack.callbacks.ema import cosine_momentum
from sptrack.data import MultiCropViews
from sptrack.data.synthetic import SyntheticImages
from sptrack.methods import DINOLoss
from sptrack.nn import DINOHead, ViT
from sptrack.optim.schedulers import LinearWarmupCosineAnnealingLR

BATCH, N_GLOBAL = 64, 2
LR, WEIGHT_DECAY = 5e-4, 0.04


def build(seed: int = 0) -> tuple[nn.ModuleDict, EMATeacher, DINOLoss]:
    """Student, EMA teacher and loss of the recipe's defaults, identical for every call."""
    torch.manual_seed(seed)
    student = nn.ModuleDict({
        "backbone": ViT(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4, use_cls_token=False),
        "head": DINOHead(64, out_dim=1024, hidden_dim=256, bottleneck_dim=64, norm="bn"),
    })
    teacher = EMATeacher(student, base=0.99)
    loss = DINOLoss(1024, student_temp=0.1, teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_fraction=0.3, center_momentum=0.9)
    return student, teacher, loss


def make_loader(steps: int) -> DataLoader:
    """``steps`` batches of 64 synthetic 28 px digits-like images with a freshly seeded multi-crop transform."""
    views = MultiCropViews(global_size=28, local_size=12, n_global=N_GLOBAL, n_local=4,
                           global_scale=(0.4, 1.0), local_scale=(0.2, 0.5), seed=0)
    data = SyntheticImages(steps * BATCH, channels=1, size=28, seed=0, gpu_transform=views)
    return DataLoader(data, batch_size=BATCH, shuffle=False, drop_last=True)


def dino_step(student: nn.ModuleDict, teacher: EMATeacher, dino_loss: DINOLoss, batch: dict, progress: float):
    """The recipe's forward for stage 'fit' (without logging): loss and the probe's embedding."""
    views = batch["views"]
    global_views, local_views = views[:N_GLOBAL], views[N_GLOBAL:]
    s_out = student["head"](student["backbone"](torch.cat(global_views))).chunk(len(global_views))
    s_out += student["head"](student["backbone"](torch.cat(local_views))).chunk(len(local_views))
    with torch.no_grad():
        t_out = teacher.module["head"](teacher.module["backbone"](torch.cat(global_views))).chunk(len(global_views))
        embedding = student["backbone"](batch["image"])
    loss = dino_loss(list(s_out), list(t_out), progress)
    dino_loss.update_center(t_out)
    return loss, embedding


def run_hand(make) -> dict:
    """Plain PyTorch: the same step, the two AdamW steps + schedules, then the EMA update."""
    student, teacher, dino_loss = build()
    loader = make()
    total = len(loader)
    started = time.perf_counter()
    optimizers, schedules = [], []
    for part in ("backbone", "head"):
        params = [p for p in student[part].parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
        optimizers.append(opt)
        schedules.append(LinearWarmupCosineAnnealingLR(opt, total_steps=total, warmup_steps=total // 10))
    transform = loader.dataset.gpu_transform
    student.train(), teacher.train(), dino_loss.train()
    loop_start, cpu_start = time.perf_counter(), time.process_time()
    for step, batch in enumerate(loader):
        batch = transform(batch)
        loss, _ = dino_step(student, teacher, dino_loss, batch, step / total)
        loss.backward()
        for opt, schedule in zip(optimizers, schedules):
            opt.step()
            opt.zero_grad(set_to_none=True)
            schedule.step()
        teacher.update_with_momentum(student, cosine_momentum(step, total, teacher.base, teacher.final))
    ended, cpu = time.perf_counter(), time.process_time() - cpu_start
    return {"epoch_s": ended - loop_start, "epoch_cpu_s": cpu, "fit_s": ended - started, "state": snapshot(student, teacher, dino_loss)}


def run_sptrack(make) -> dict:
    """The recipe's Module (named optimizers, gpu_transform, EMAUpdate) under sptrack.Trainer."""
    student, teacher, dino_loss = build()
    loader = make()
    total = len(loader)

    def forward(self, batch, stage):
        loss, embedding = dino_step(self.student, self.teacher, self.dino_loss, batch, self.trainer.global_step / total)
        return {"loss": loss, "embedding": embedding, "label": batch["label"]}

    scheduler = {"type": "LinearWarmupCosineAnnealingLR"}
    optim = {
        part: {"modules": f"student.{part}", "optimizer": {"type": "AdamW", "lr": LR, "weight_decay": WEIGHT_DECAY}, "scheduler": scheduler}
        for part in ("backbone", "head")
    }
    module = sptrack.Module(forward=forward, optim=optim, student=student, teacher=teacher, dino_loss=dino_loss)
    module._print_summary = lambda: None
    result = fit_timed(sptrack.Trainer, module, loader, callbacks=[EMAUpdate("student", "teacher")])
    return {**result, "state": snapshot(student, teacher, dino_loss)}


#: Trial name -> function(loader factory) -> {"epoch_s", "fit_s", "state"}; "hand" is the baseline.
VARIANTS = {"hand": run_hand, "sptrack": run_sptrack}
