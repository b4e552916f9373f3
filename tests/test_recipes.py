"""The I-JEPA and LeJEPA recipes end to end through the CLI: one short epoch on synthetic data."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch

from dist.launch import run
from sptrack.run.cli import main
from sptrack.run.config import apply_overrides
from sptrack.run.recipe import load_recipe
from sptrack.run.train import train

COMMON = ["data.dataset=synthetic", "data.subset=64", "data.batch_size=32", "data.val_batch_size=250",
          "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
TINY = {
    "ijepa": [*COMMON, "model.predictor_dim=16", "model.predictor_depth=1", "model.predictor_heads=2"],
    "lejepa": [*COMMON, "model.proj_hidden_dim=64", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=64"],
}
STATE = {
    "ijepa": {"teacher.num_updates", "predictor.mask_token", "encoder.patch_embed.weight", "callbacks_modules.probe.linear.weight"},
    "lejepa": {"encoder.backbone.patch_embed.weight", "encoder.projector.0.weight", "callbacks_modules.probe.linear.weight"},
}
OPTIMIZERS = {"ijepa": ("encoder", "predictor", "probe"), "lejepa": ("backbone", "projector", "probe")}


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_runs_one_epoch_end_to_end(name, tmp_path, capsys):
    assert main([f"recipes/{name}.py", *TINY[name], f"trainer.output_dir={tmp_path}", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert f"sptrack {name}: results" in out and "linear_probe_acc" in out and "random_init_linear_probe_acc" in out
    assert all(opt in out for opt in OPTIMIZERS[name])
    ckpt = torch.load(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert STATE[name] <= set(ckpt["state_dict"])
    if name == "ijepa":
        assert ckpt["state_dict"]["teacher.num_updates"].item() == 2


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_trains_with_a_finite_loss_and_moves_the_encoder(name, tmp_path):
    recipe = load_recipe(f"recipes/{name}.py")
    cfg = recipe.default_config()
    apply_overrides(cfg, [*TINY[name], f"trainer.output_dir={tmp_path}"])
    results = train(recipe, cfg)
    assert math.isfinite(results["train/loss"]) and results["global_step"] == 2
    assert 0.0 <= results["linear_probe_acc"] <= 1.0 and 0.0 <= results["random_init_linear_probe_acc"] <= 1.0
    assert {"eval/knn_acc", "eval/probe_acc", "eval/rankme"} <= set(results)


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_dry_run_lists_its_named_optimizers(name, tmp_path, capsys):
    assert main([f"recipes/{name}.py", *TINY[name], f"trainer.output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in OPTIMIZERS[name]) and not (tmp_path / name).exists()


def test_ijepa_runs_under_fsdp2_with_two_processes(tmp_path):
    """The EMA teacher's inner ViT and the encoder's forward_tokens entry point are gathered by FSDP2."""
    output = run([sys.executable, "-m", "sptrack.run", "recipes/ijepa.py", *TINY["ijepa"], "data.batch_size=16",
                  f"trainer.output_dir={tmp_path}", "--devices", "2", "--strategy", "fsdp2"], timeout=240)
    assert "sptrack ijepa: results" in output and "linear_probe_acc" in output
    assert re.search(r"global_step\s*│\s*2\s*│", output)
    assert (tmp_path / "ijepa" / "version_0" / "checkpoints" / "last.ckpt").is_dir()  # a sharded (distributed) checkpoint
