"""The DINO recipe through the CLI: end to end on synthetic data, dry run, DDP, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sptrack.run.cli import main
from sptrack.run.config import apply_overrides
from sptrack.run.final_eval import final_linear_eval
from sptrack.run.recipe import load_recipe
from sptrack.run.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.dataset=synthetic", "data.subset=64", "data.batch_size=32", "data.val_batch_size=250",
    "model.cnn_widths=(8, 16)", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64",
    "model.head_hidden_dim=64", "model.bottleneck_dim=16", "dino.n_local=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("backbone,encoder_key,width", [("cnn", "student.backbone.features.0.weight", 16),
                                                        ("vit", "student.backbone.patch_embed.weight", 32)])
def test_cli_end_to_end_on_synthetic_data(backbone, encoder_key, width, tmp_path, capsys):
    code = main(["recipes/dino.py", *TINY, f"model.backbone={backbone}", f"trainer.output_dir={tmp_path}", "--seed", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sptrack dino: results" in out and "linear_probe_acc" in out and "random_init_linear_probe_acc" in out
    assert "random_init_linear_probe_std" in out and "linear_probe_gain" in out
    assert "sptrack optimizers" in out and "probe" in out
    run_dir = tmp_path / "dino" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and "sptrack" in ckpt
    assert {"teacher.num_updates", "dino_loss.center", "callbacks_modules.probe.linear.weight"} <= set(ckpt["state_dict"])
    assert ckpt["state_dict"]["teacher.num_updates"].item() == 2
    assert encoder_key in ckpt["state_dict"]  # the chosen backbone; the probe reads its embedding width
    assert ckpt["state_dict"]["callbacks_modules.probe.linear.weight"].shape[1] == width


def test_dry_run_prints_plan_and_trains_nothing(tmp_path, capsys):
    assert main(["recipes/dino.py", *TINY, "optim.head.lr=0.02", f"trainer.output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resolved configuration" in out and "optim.head.lr" in out and "0.02" in out
    assert "student.backbone" in out and "callbacks_modules.probe" in out
    assert not (tmp_path / "dino").exists()


def test_resume_restores_teacher_and_centre_exactly(tmp_path):
    recipe = load_recipe("recipes/dino.py")
    cfg = recipe.default_config()
    apply_overrides(cfg, [*TINY, f"trainer.output_dir={tmp_path}"])
    train(recipe, cfg)
    ckpt_path = tmp_path / "dino" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, weights_only=False)["state_dict"]
    initial = recipe.build(cfg).module.state_dict()
    assert not torch.equal(saved["dino_loss.center"], initial["dino_loss.center"])

    # Resume into a fresh build with no epochs left: exactly what was saved must be in the Module.
    captured = {}
    import sptrack.run.train as train_module

    real_fit = train_module.Trainer.fit

    def fit_and_capture(self, module, *args, **kwargs):
        result = real_fit(self, module, *args, **kwargs)
        captured.update({k: v.clone() for k, v in module.state_dict().items()})
        return result

    train_module.Trainer.fit = fit_and_capture
    try:
        train(recipe, cfg, ckpt_path=str(ckpt_path))
    finally:
        train_module.Trainer.fit = real_fit
    for key in ("dino_loss.center", "teacher.num_updates", *[k for k in saved if k.startswith("teacher.module.")]):
        assert torch.equal(captured[key], saved[key]), key


def test_ddp_two_processes_run_the_recipe(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sptrack.run", "recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}",
           "--devices", "2", "--strategy", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("sptrack dino: results") == 1  # only rank 0 reports
    runs = sorted((tmp_path / "dino").iterdir())
    assert [p.name for p in runs] == ["version_0"], "both ranks must share one run directory"
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 1  # 64 samples / (2 ranks x 32)


def test_cli_tracks_the_run_in_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["recipes/dino.py", *TINY, f"trainer.output_dir={tmp_path}", f"tracker.uri={uri}", "--tracker", "mlflow"]
    assert main([str(ROOT / args[0]), *args[1:]]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("dino").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    run = client.get_run(run_id)
    assert run.data.params["optim/backbone/modules"] == "student.backbone"
    assert run.data.params["optim/probe/class"] == "AdamW"
    history = MlflowClient(uri).get_metric_history(run_id, "hparams/lr_backbone")
    assert [p.step for p in history] == [0, 1]
    ckpt = torch.load(tmp_path / "dino" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["sptrack_tracker"]["runs"]["mlflow"] == run_id

    # The end-of-run evaluation is in the same run, at the last step, and is the probe of the saved encoder.
    final = {k: client.get_metric_history(run_id, f"final/{k}") for k in ("linear_probe_acc", "random_init_linear_probe_acc",
                                                                            "random_init_linear_probe_std", "linear_probe_gain")}
    assert all([p.step for p in h] == [2] for h in final.values()), final
    recipe = load_recipe(str(ROOT / "recipes" / "dino.py"))
    cfg = recipe.default_config()
    apply_overrides(cfg, TINY)
    experiment = recipe.build(cfg)
    prefix = "student.backbone."
    experiment.encoder.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    expected = final_linear_eval(experiment, baseline_inits=cfg.eval.baseline_inits)
    for key, value in expected.items():
        assert final[key][0].value == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("override,fragment", [("eval.baseline_inits=0", "must be an integer >= 1, got 0"),
                                               ("model.backbone=resnet", "must be one of 'vit', 'cnn', got 'resnet'")])
def test_bad_recipe_values_fail_before_anything_is_written(override, fragment, tmp_path, capsys):
    assert main(["recipes/dino.py", *TINY, override, f"trainer.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err and fragment in err
    assert not any(tmp_path.iterdir())
