"""Regenerate the checked-in dashboard examples with the project's own commands.

1. a small DINO sweep on synthetic images (4 trials, tracked in a local MLflow SQLite store);
2. ``python -m sptrack.dashboard report --study ...`` -> ``<work>/report/report.html`` + PNGs;
3. ``python -m sptrack.dashboard screenshot`` (headless Chromium) -> ``dashboards/comparison.png``;
4. ``python -m sptrack.dashboard wandb ... --storage`` -> ``dashboards/wandb_workspace.json``.

Usage: ``python dashboards/demo.py [--work DIR] [--trials N]`` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The tiny DINO of the sweep tests: a 1-block ViT on 128 synthetic images, 8 optimizer steps per trial.
DINO = [
    str(ROOT / "recipes" / "dino.py"), "data.dataset=synthetic", "data.subset=128", "data.batch_size=16", "data.val_batch_size=250",
    "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64", "model.head_hidden_dim=64",
    "model.bottleneck_dim=16", "dino.n_local=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]


def run(*args: str, cwd: Path) -> None:
    """Run ``python -m <args>`` and stop on failure."""
    print("+ python -m", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *args], cwd=cwd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    """Sweep, report, screenshot, W&B spec."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/dashboard-demo", help="scratch folder (sweep outputs, MLflow store, report)")
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    mlflow_uri, storage = f"sqlite:///{work}/mlflow.db", f"sqlite:///{work}/study.db"
    run("sptrack.run", *DINO, f"trainer.output_dir={work}/out", f"tracker.uri={mlflow_uri}", "tracker.experiment=dino-demo",
        "--tracker", "mlflow", "--sweep", "--trials", str(args.trials), "--storage", storage, "--study", "dino-demo",
        "--sampler", "random", "--pruner", "none", cwd=work)
    run("sptrack.dashboard", "report", "--tracking-uri", mlflow_uri, "--study", "dino-demo", "--out", str(work / "report"), cwd=work)
    run("sptrack.dashboard", "screenshot", str(work / "report" / "report.html"), "--out", str(HERE / "comparison.png"),
        "--width", "1400", "--height", "1150", cwd=work)
    run("sptrack.dashboard", "wandb", "--entity", "my-team", "--project", "sptrack", "--study", "dino-demo", "--storage", storage,
        "--optimizers", "backbone,head,probe", "--out", str(HERE / "wandb_workspace.json"), cwd=work)


if __name__ == "__main__":
    main()
