"""Presets: the papers' settings by name, applied before the other overrides; two full-size training steps of each on CPU."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sptrack.errors import ConfigError
from sptrack.recipe.config import apply_overrides
from sptrack.recipe.loading import load_recipe
from sptrack.recipe.presets import apply_preset, find_preset, split_preset
from sptrack.run.cli import build_parser, resolve_config

# recipe, preset, the encoder's width, patch size and blocks, and the side images are decoded at
FULL_SIZE = [
    ("dino", "vit_s16_imagenet", 384, 16, 12, 224),
    ("ijepa", "vit_b16_imagenet", 768, 16, 12, 224),
    ("lejepa", "vit_s8_imagenette", 384, 8, 12, 128),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight 300 x 260 RGB JPEGs in two class folders (no train/val: a quarter is held out)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        folder = root / f"class{i % 2}"
        folder.mkdir(exist_ok=True)
        pixels = (torch.rand(260, 300, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def test_a_preset_applies_before_the_other_overrides_and_errors_name_it():
    recipe = load_recipe("dino")
    args = build_parser().parse_intermixed_args(["dino", "--tracker", "none"])
    cfg = recipe.default_config()
    apply_preset(cfg, find_preset(recipe.presets, "vit_s16_imagenet", "dino"))
    apply_overrides(cfg, ["model.depth=2"])
    assert (cfg.model.embed_dim, cfg.model.patch_size, cfg.model.depth, cfg.dino.n_local, cfg.dino.local_size) == (384, 16, 2, 10, 96)
    assert split_preset(["a=1", "preset=x", "b=2"]) == ("x", ["a=1", "b=2"])
    with pytest.raises(ConfigError, match="preset: is given 2 times"):
        split_preset(["preset=x", "preset=y"])
    with pytest.raises(ConfigError, match="has no preset 'vit_s16' .*Did you mean 'vit_s16_imagenet'"):
        find_preset(recipe.presets, "vit_s16", "dino")
    with pytest.raises(ConfigError, match="data.dataset: mnist5k's 28-px images are not a multiple of model.patch_size=16"):
        resolve_config(recipe, ["preset=vit_s16_imagenet"], args)


def test_dry_run_shows_what_the_preset_sets(photos):
    proc = subprocess.run([sys.executable, "-m", "sptrack.run", "lejepa", "preset=vit_s8_imagenette", "data.dataset=image_folder",
                           f"data.root={photos}", "--tracker", "none", "--dry-run"], capture_output=True, text=True, timeout=120, cwd=photos)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preset=vit_s8_imagenette: ViT-S/8 at 128 px" in proc.stdout
    assert "  lejepa.lamb = 0.02" in proc.stdout and "  model.patch_size = 8" in proc.stdout


@pytest.mark.parametrize("name, preset, width, patch, blocks, side", FULL_SIZE)
def test_two_training_steps_of_each_preset_at_full_size(name, preset, width, patch, blocks, side, photos, tmp_path):
    import sptrack

    recipe = load_recipe(name)
    cfg = recipe.default_config()
    apply_preset(cfg, find_preset(recipe.presets, preset, name))
    apply_overrides(cfg, ["data.dataset=image_folder", f"data.root={photos}", "data.batch_size=2", "data.val_batch_size=2",
                          f"trainer.output_dir={tmp_path}"])
    cfg.check()
    torch.manual_seed(0)
    experiment = recipe.build_experiment(cfg)
    conv = next(m for m in experiment.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert tuple(conv.weight.shape) == (width, 3, patch, patch), "the published width and patch, on RGB input"
    assert sum(1 for m in experiment.encoder.modules() if type(m).__name__ == "Block") == blocks
    batch = next(iter(experiment.train_loader))
    assert tuple(batch["image"].shape[1:]) == (3, side, side), "images decoded at the preset's input size"
    trainer = sptrack.Trainer(accelerator="cpu", devices=1, max_steps=2, max_epochs=1, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                              callbacks=experiment.callbacks)
    trainer.fit(experiment.module, experiment.train_loader)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
