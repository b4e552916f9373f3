"""What experiment tracking costs a training epoch: no tracker vs MLflow (embedded SQLite) vs W&B offline.

    python bench/tracker_cost.py [--model conv|mlp] [--reps 5] [--batches 100] [--out DIR] [--json PATH]

The same small three-optimizer job (backbone SGD every step, projector AdamW every step, head
AdamW every 2nd step, step cosine schedulers; four metrics logged every step with
``log_every_n_steps=1``, plus the three ``hparams/lr_<name>``) runs one epoch per trial.
``--model conv`` (default) is a recipe-like step: a 4-layer CNN on 32x32 images, batch 128
(~90 ms per step on two CPU cores). ``--model mlp`` is a worst case with ~4 ms steps, where the
fixed per-step cost of tracking shows. Trials are
interleaved (none, mlflow, wandb, none, mlflow, wandb, ...) after one untimed warm-up of each, so
drifts of the machine hit all configurations alike. Reported per configuration: the median epoch
time (``on_train_epoch_start`` to ``on_train_epoch_end``: what tracking costs while training)
and the median whole ``fit`` (adds run start, artifacts and the final flush, paid once per job),
each with its median ratio to the untracked trial of the same round; also the CPU time used during
the epoch by the process and its children (less noisy than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import sptrack  # noqa: E402
from sptrack.track import MLflowTracker, WandbTracker, tracker_callbacks  # noqa: E402

OPTIM = {
    "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9}, "scheduler": "CosineAnnealingLR"},
    "projector": {"modules": "projector", "optimizer": {"type": "AdamW", "lr": 1e-3}, "scheduler": "CosineAnnealingLR"},
    "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 1e-3}, "frequency": 2},
}


def forward(module, batch, stage):
    x, y = batch["x"], batch["y"]
    feats = module.backbone(x)
    proj = module.projector(feats)
    logits = module.head(feats.detach())
    ssl = F.mse_loss(proj, torch.roll(proj.detach(), 1, 0))
    ce = F.cross_entropy(logits, y)
    loss = ssl + ce
    module.log_dict({"train_loss": loss, "ssl_loss": ssl, "ce_loss": ce, "acc": (logits.argmax(1) == y).float().mean()},
                    on_step=True, on_epoch=False, batch_size=len(x))
    return {"loss": loss}


class DictData(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def build(model: str, width: int) -> sptrack.Module:
    torch.manual_seed(0)
    if model == "conv":
        w = 32
        backbone = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        width = 4 * w
    else:
        backbone = nn.Sequential(nn.Linear(128, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
    return sptrack.Module(forward=forward, optim=OPTIM, backbone=backbone,
                          projector=nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, 64)),
                          head=nn.Linear(width, 10))


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children (W&B's core process)."""
    total = time.process_time()
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
    except ImportError:
        pass
    return total


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()
        self.cpu_start = _cpu_seconds()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start
        self.cpu = _cpu_seconds() - self.cpu_start


def trial(kind: str, args, loader, work: Path) -> tuple[float, float, float]:
    if kind == "none":
        callbacks = []
    elif kind == "mlflow":
        callbacks = tracker_callbacks(MLflowTracker(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="bench", work_dir=str(work)),
                                      config={"bench": vars(args), "optim": OPTIM})
    else:
        callbacks = tracker_callbacks(WandbTracker(project="bench", dir=str(work), mode="offline"), config={"bench": vars(args), "optim": OPTIM})
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         num_sanity_val_steps=0, callbacks=[*callbacks, timer])
    module = build(args.model, args.width)
    module._print_summary = lambda: None  # keep the output to the results
    started = time.perf_counter()
    trainer.fit(module, loader)
    return timer.seconds, time.perf_counter() - started, timer.cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("conv", "mlp"), default="conv")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=128, help="mlp width")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the summary as JSON to this path (bench/run.py uses it)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="sptrack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    g = torch.Generator().manual_seed(0)
    n = args.batches * args.batch_size
    shape = (3, 32, 32) if args.model == "conv" else (128,)
    data = DictData(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    kinds = ["none", "mlflow", "wandb"]
    print(f"model={args.model} torch threads={torch.get_num_threads()} cpus={os.cpu_count()} batches/epoch={args.batches} "
          f"metrics/step={4 + 3} reps={args.reps} work={work}", flush=True)
    for kind in kinds:  # warm-up: imports, database creation, W&B service start
        trial(kind, args, loader, work)
    epoch = {k: [] for k in kinds}
    fit = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    for rep in range(args.reps):
        for kind in kinds:
            e, f, c = trial(kind, args, loader, work)
            epoch[kind].append(e)
            fit[kind].append(f)
            cpu[kind].append(c)
        print(f"round {rep + 1}: " + "  ".join(f"{k} epoch {epoch[k][-1]:.2f}s (cpu {cpu[k][-1]:.2f}s) fit {fit[k][-1]:.2f}s" for k in kinds), flush=True)

    def ratio(values, kind):
        return statistics.median(a / b for a, b in zip(values[kind], values["none"]))

    print()
    print(f"{'tracker':8s} {'epoch':>9s} {'ratio':>7s} {'ms/step':>8s} {'epoch cpu':>10s} {'ratio':>7s} {'fit':>9s} {'ratio':>7s}")
    for kind in kinds:
        per_step = statistics.median((a - b) / args.batches * 1000 for a, b in zip(epoch[kind], epoch["none"]))
        print(f"{kind:8s} {statistics.median(epoch[kind]):8.3f}s {ratio(epoch, kind):6.3f}x {per_step:+8.2f} "
              f"{statistics.median(cpu[kind]):9.3f}s {ratio(cpu, kind):6.3f}x {statistics.median(fit[kind]):8.3f}s {ratio(fit, kind):6.3f}x")
    print("(medians over rounds; ratios are per round against the untracked trial of the same round; "
          "epoch cpu counts all threads and child processes)")
    if args.json:
        import json

        summary = {
            kind: {
                "epoch_s": statistics.median(epoch[kind]), "epoch_ratio": ratio(epoch, kind),
                "epoch_ratio_min": min(a / b for a, b in zip(epoch[kind], epoch["none"])),
                "epoch_ratio_max": max(a / b for a, b in zip(epoch[kind], epoch["none"])),
                "ms_per_step_added": statistics.median((a - b) / args.batches * 1000 for a, b in zip(epoch[kind], epoch["none"])),
                "epoch_cpu_s": statistics.median(cpu[kind]), "cpu_ratio": ratio(cpu, kind),
                "fit_s": statistics.median(fit[kind]), "fit_ratio": ratio(fit, kind),
            }
            for kind in kinds
        }
        payload = {"benchmark": "tracker_cost", "model": args.model, "reps": args.reps, "batches": args.batches,
                   "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "target": 1.02, "trackers": summary}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
