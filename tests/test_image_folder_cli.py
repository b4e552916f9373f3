"""A user's own folder of RGB photos through the CLI, with every recipe (a subprocess, as a user runs it).

24 JPEGs of 40x30 in 3 class folders, no train/val: the recipes hold out 20% of them, decode them to 3
channels at their own input size (28 px) and report the held-out linear probe.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.batch_size=8", "eval.baseline_inits=1"]
RECIPES = {
    "dino": [*TINY, "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16"],
    "ijepa": [*TINY, "model.predictor_dim=16", "model.predictor_depth=1", "model.predictor_heads=2"],
    "lejepa": [*TINY, "model.proj_hidden_dim=64", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=64"],
}
#: Each recipe's patch embedding in its checkpoint: (embed_dim, channels, patch, patch).
PATCH_EMBED = {"dino": "student.backbone.patch_embed.weight", "ijepa": "encoder.patch_embed.weight",
               "lejepa": "encoder.backbone.patch_embed.weight"}


def _photos(root: Path) -> Path:
    from PIL import Image

    for i in range(24):
        label = i % 3
        folder = root / ("cats", "dogs", "fish")[label]
        folder.mkdir(parents=True, exist_ok=True)
        colour = tuple(200 if c == label else 8 * i for c in range(3))
        Image.new("RGB", (40, 30), colour).save(folder / f"{i:02d}.jpg")
    return root


def _run(name: str, photos: Path, out: Path) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SPTRACK_TRACKER": "none"}
    argv = [str(ROOT / "recipes" / f"{name}.py"), "data.dataset=image_folder", f"data.root={photos}", *RECIPES[name],
            f"trainer.output_dir={out}", "--max-epochs", "1"]
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", *argv], cwd=out.parent, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, out / name / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Each recipe's run, 3 at a time (fresh interpreters, mostly waiting on imports)."""
    root = tmp_path_factory.mktemp("photos")
    photos = _photos(root / "photos")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run, name, photos, root / f"runs-{name}") for name in RECIPES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_folder_of_rgb_photos_trains_every_recipe_and_reports_the_held_out_probe(name, runs):
    import torch

    proc, checkpoint = runs[name]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"sptrack {name}: results" in proc.stdout and "random_init_linear_probe_acc" in proc.stdout
    accuracy = re.search(r"linear_probe_acc\W+([0-9.]+)", proc.stdout)
    assert accuracy and 0 <= float(accuracy.group(1)) <= 1, proc.stdout[-3000:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert state[PATCH_EMBED[name]].shape == (32, 3, 4, 4)  # 3 channels in: the photos are RGB
