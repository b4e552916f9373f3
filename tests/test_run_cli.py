"""The DINO recipe through the CLI: end to end on synthetic data, dry run, DDP, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sptrack.recipe.config import apply_overrides
from sptrack.recipe.final_eval import final_linear_eval
from sptrack.recipe.loading import load_recipe
from sptrack.run.cli import main

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


def test_resume_through_the_cli_trains_on_to_the_uninterrupted_result(tmp_path):
    """Resume a 2-epoch run from its epoch-0 checkpoint through the CLI: it trains the second epoch (teacher,
    centre and all) and ends bitwise where the uninterrupted run ended."""
    import shutil

    two_epochs = [*TINY, "trainer.max_epochs=2"]
    assert main(["recipes/dino.py", *two_epochs, f"trainer.output_dir={tmp_path / 'straight'}"]) == 0
    straight = tmp_path / "straight" / "dino" / "version_0" / "checkpoints"
    halfway = tmp_path / "halfway.ckpt"
    shutil.copy(straight / "epoch=0-step=2.ckpt", halfway)
    assert main(["recipes/dino.py", *two_epochs, f"trainer.output_dir={tmp_path / 'resumed'}", "--resume", str(halfway)]) == 0
    start = torch.load(halfway, weights_only=False)
    end = torch.load(tmp_path / "resumed" / "dino" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    expected = torch.load(straight / "last.ckpt", weights_only=False)
    assert start["global_step"] == 2 and end["global_step"] == expected["global_step"] == 4
    assert end["state_dict"]["teacher.num_updates"].item() == 4
    moved = [k for k in ("dino_loss.center", "student.backbone.features.0.weight", "teacher.module.backbone.features.0.weight")
             if not torch.equal(end["state_dict"][k], start["state_dict"][k])]
    assert len(moved) == 3, moved  # the resumed job trained
    assert sorted(end["state_dict"]) == sorted(expected["state_dict"])
    assert [k for k in expected["state_dict"] if not torch.equal(end["state_dict"][k], expected["state_dict"][k])] == []


def test_ddp_two_processes_run_the_recipe(tmp_path):
    """Two DDP processes through the CLI: one run directory and one tracked run, the same weights on both ranks."""
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "sptrack.run", str(ROOT / "tests" / "launch_helpers" / "dino_weights.py"), *TINY,
           f"trainer.output_dir={tmp_path}", "--devices", "2", "--strategy", "ddp", "--tracker", "mlflow", f"tracker.uri={store}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("results") == 1  # only rank 0 reports
    runs = sorted((tmp_path / "dino_weights").iterdir())
    assert [p.name for p in runs] == ["version_0"], "both ranks must share one run directory"
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 1  # 64 samples / (2 ranks x 32)
    ranks = [torch.load(tmp_path / f"weights-rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [1, 1]
    a, b = ranks[0]["state_dict"], ranks[1]["state_dict"]
    assert sorted(a) == sorted(b) == sorted(ckpt["state_dict"])
    # BatchNorm running statistics are per rank (no SyncBatchNorm); everything trained must agree exactly.
    shared = [k for k in a if "running_" not in k and "num_batches_tracked" not in k]
    assert len(shared) > 20
    assert [k for k in shared if not torch.equal(a[k], b[k])] == []
    assert all(torch.equal(a[k], ckpt["state_dict"][k]) for k in shared)
    client = MlflowClient(store)
    tracked = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(tracked) == 1 and tracked[0].info.status == "FINISHED"
    assert tracked[0].data.params["trainer/world_size"] == "2"
    assert [p.step for p in client.get_metric_history(tracked[0].info.run_id, "train/loss")] == [0]


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
    assert run.data.params["optim.backbone.modules"] == "student.backbone"
    assert run.data.params["optim.probe.class"] == "AdamW"
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


def test_the_main_command_tracks_into_one_embedded_store_per_output_directory(tmp_path, monkeypatch, capsys):
    """No --tracker, no server: each run is an MLflow run in <output_dir>/mlflow.db, an experiment of kind model
    training named after the recipe, and the report prints the command that opens it."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("SPTRACK_TRACKER", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for seed in (1, 2):
        assert main(["dino", *TINY, "--seed", str(seed)]) == 0
        outputs.append(capsys.readouterr().out)
    store = tmp_path / "runs" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "dino"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.params["trainer.seed"] for r in runs] == ["1", "2"]
    for run, out in zip(runs, outputs):
        assert run.data.metrics["final/linear_probe_acc"] > 0 and "hparams/lr_backbone" in run.data.metrics
        assert f"tracked: MLflow run {run.info.run_id} (experiment 'dino') in sqlite:///{store}" in out
        assert f"open it: mlflow ui --backend-store-uri sqlite:///{store} --host 127.0.0.1 --port 5000" in out
        assert f"then: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "dino").iterdir()) == ["version_0", "version_1"]


def test_tracker_none_records_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPTRACK_TRACKER", raising=False)
    assert main(["dino", *TINY, "--tracker", "none", f"trainer.output_dir={tmp_path}"]) == 0
    assert "tracked:" not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino"]


def test_a_wandb_run_without_credentials_is_offline_and_the_report_prints_the_sync_command(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc: no credentials
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out_dir = tmp_path / "out"
    assert main(["dino", *TINY, "--tracker", "wandb", f"trainer.output_dir={out_dir}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("tracked:", "upload it:"))]
    assert len(lines) == 2 and lines[0].startswith("tracked: W&B offline run "), lines
    run_id = lines[0].split()[4]
    target = Path(lines[1].split("upload it: wandb sync ", 1)[1])
    assert target.parent == out_dir / "wandb" and target.name.startswith("offline-run-") and target.name.endswith(run_id)
    assert len(list(target.glob("*.wandb"))) == 1  # the run's records, which `wandb sync` uploads
