"""A user's own RGB photos through the CLI, with every recipe (a subprocess, as a user runs it).

24 JPEGs of 40x30 in 3 class folders, no train/val: the recipes hold out 20% of them, decode them to 3
channels at their own input size (28 px), cut the training views from the 40x30 originals in the
loader workers, and report the held-out linear probe. The same photos as tar shards (written by
``python -m sptrack.data.make_shards``, read by DINO as 2 torchrun processes with 2 loader workers
each) and as a Hugging Face dataset saved to disk (LeJEPA).
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.batch_size=8", "eval.baseline_inits=1"]
RECIPES = {
    "dino": [*TINY, "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16"],
    "ijepa": [*TINY, "model.predictor_dim=16", "model.predictor_depth=1", "model.predictor_heads=2"],
    "lejepa": [*TINY, "model.proj_hidden_dim=64", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=64"],
}
#: Each recipe's first layer in its checkpoint and that weight's shape: 3 channels in, the photos are RGB. DINO's
#: default backbone is the small CNN (first stage 16 channels, 3x3), the others' a ViT (embed_dim 32, 4x4 patches).
FIRST_LAYER = {"dino": ("student.backbone.features.0.weight", (16, 3, 3, 3)),
               "ijepa": ("encoder.patch_embed.weight", (32, 3, 4, 4)),
               "lejepa": ("encoder.backbone.patch_embed.weight", (32, 3, 4, 4))}


def _photos(root: Path) -> Path:
    from PIL import Image

    for i in range(24):
        label = i % 3
        folder = root / ("cats", "dogs", "fish")[label]
        folder.mkdir(parents=True, exist_ok=True)
        # Noise: accuracies then fall between 0 and 1, where the count of images scored shows.
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg")
    return root


def _hf_copy(photos: Path, out: Path) -> Path:
    """The photos as a Hugging Face dataset (image bytes + ClassLabel) written by save_to_disk."""
    import datasets

    files = sorted(photos.rglob("*.jpg"))
    names = sorted({f.parent.name for f in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    table = {"image": [{"bytes": f.read_bytes(), "path": None} for f in files], "label": [names.index(f.parent.name) for f in files]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(out))
    return out


#: (source, recipe, processes): every recipe on the folder; DINO on the shards under torchrun (the streamed kNN
#: bank and the rank-0 probe); LeJEPA on the HF copy. The sources share everything past the dataset.
RUNS = [("image_folder", n, 1) for n in RECIPES] + [("shards", "dino", 2), ("hf", "lejepa", 1)]


def _run(source: str, name: str, processes: int, data: Path, out: Path) -> tuple[subprocess.CompletedProcess, Path]:
    from dist.launch import clean_env
    from track_helpers.mlflow_server import free_port

    argv = [str(ROOT / "recipes" / f"{name}.py"), f"data.dataset={source}", f"data.root={data}", *RECIPES[name],
            f"trainer.output_dir={out}", "--max-epochs", "1"]
    launcher = [sys.executable, "-m", "sptrack.run"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", "-m", "sptrack.run"]
        argv += ["--strategy", "ddp", "data.num_workers=2", "data.batch_size=4"]
    proc = subprocess.run([*launcher, *argv], cwd=out.parent, env={**clean_env(), "SPTRACK_TRACKER": "none"}, capture_output=True,
                          text=True, timeout=300)
    return proc, out / name / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Each (source, recipe) run, 3 at a time (fresh interpreters, mostly waiting on imports)."""
    from sptrack.data.make_shards import make_shards

    root = tmp_path_factory.mktemp("photos")
    photos = _photos(root / "photos")
    sources = {"image_folder": photos, "shards": root / "shards", "hf": _hf_copy(photos, root / "hf")}
    make_shards(photos, sources["shards"], shard_size=5)  # 19 training photos in 4 shards, 5 held out in 1
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(_run, *key, sources[key[0]], root / f"runs-{key[0]}-{key[1]}") for key in RUNS}
        return {key: f.result() for key, f in futures.items()}


@pytest.mark.parametrize("key", RUNS, ids=[f"{source}-{name}-{n}proc" for source, name, n in RUNS])
def test_photos_train_every_recipe_from_every_source_and_report_the_held_out_probe(key, runs):
    import torch

    proc, checkpoint = runs[key]
    name = key[1]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"sptrack {name}: results" in proc.stdout and "random_init_linear_probe_acc" in proc.stdout
    # 5 held-out photos, every one scored once (on global rank 0 alone for the probe, split over the ranks
    # with padding for the kNN): both accuracies are multiples of 1/5 (the table prints 4 digits).
    for metric in ("linear_probe_acc", "eval/knn_acc"):
        value = re.search(r"[│|] " + re.escape(metric) + r" +[│|] +([0-9.]+)", proc.stdout)
        assert value and 0 <= float(value.group(1)) <= 1, proc.stdout[-3000:]
        assert abs(float(value.group(1)) * 5 - round(float(value.group(1)) * 5)) < 5e-3, (metric, value.group(1))
    # 19 training photos, batches of 8 (or 2 ranks x 4), the last partial batch dropped: 2 steps.
    assert re.search(r"global_step\W+2\b", proc.stdout), proc.stdout[-3000:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    key, shape = FIRST_LAYER[name]
    assert state[key].shape == shape
