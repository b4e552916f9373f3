"""The I-JEPA and LeJEPA recipes end to end through the CLI: one short epoch on synthetic data."""

from __future__ import annotations

import math
import re
import sys

import lightning.pytorch as pl
import pytest
import torch

from dist.launch import run
from sptrack.recipe.config import apply_overrides
from sptrack.recipe.loading import load_recipe
from sptrack.recipes.ijepa import PAPER
from sptrack.run.cli import main

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
#: The I-JEPA recipe brought back to the paper's loss (its ``paper`` preset's method keys), as overrides.
IJEPA_PAPER = [*TINY["ijepa"], *(f"{key}={value}" for key, value in PAPER.items())]
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


#: What each recipe's encoder optimizer trains (its state-dict prefix), and its EMA teacher's, if any.
ENCODER = {"ijepa": ("encoder.", "teacher.module."), "lejepa": ("encoder.backbone.", None)}


class Snapshots(pl.Callback):
    """The Module's weights after each training batch (after the recipe's own callbacks, e.g. the EMA update)."""

    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_trains_with_a_finite_loss_and_moves_the_encoder(name, tmp_path):
    """Every encoder weight moves; the I-JEPA teacher is exactly the EMA of the encoder at each step."""
    from sptrack.callbacks.ema import cosine_momentum
    from sptrack.module.trainer import Trainer
    from sptrack.recipe.trainer_args import trainer_kwargs

    recipe = load_recipe(f"recipes/{name}.py")
    cfg = recipe.default_config()
    apply_overrides(cfg, [*TINY[name], f"trainer.output_dir={tmp_path}", "trainer.devices=1", "trainer.num_nodes=1"])
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    experiment = recipe.build_experiment(cfg)
    initial = {k: v.detach().clone() for k, v in experiment.module.state_dict().items()}
    snapshots = Snapshots()
    trainer = Trainer(**trainer_kwargs(cfg), callbacks=[*experiment.callbacks, snapshots], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(experiment.module, experiment.train_loader, experiment.val_loader)
    assert trainer.global_step == 2 and len(snapshots.after_step) == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    student, teacher = ENCODER[name]
    weights = [k for k, v in initial.items() if k.startswith(student) and v.is_floating_point()]
    assert len(weights) > 4
    final = snapshots.after_step[-1]
    unmoved = [k for k in weights if torch.equal(final[k], initial[k])]
    assert not unmoved, f"{len(unmoved)} of {len(weights)} encoder tensors did not change: {unmoved[:4]}"
    if teacher is None:
        return
    ema = experiment.module.teacher
    pairs = [(teacher + k[len(student):], k) for k in weights if teacher + k[len(student):] in initial
             and dict(experiment.module.named_parameters()).get(teacher + k[len(student):]) is not None]
    assert len(pairs) > 4
    previous = initial
    for step, now in enumerate(snapshots.after_step):
        m = cosine_momentum(step, 2, ema.base, ema.final)
        for t_key, s_key in pairs:
            expected = m * previous[t_key] + (1 - m) * now[s_key]
            torch.testing.assert_close(now[t_key], expected, rtol=0, atol=1e-6, msg=f"{t_key} at step {step}")
        assert not torch.equal(now[pairs[0][0]], now[pairs[0][1]])  # the teacher is not a copy of the student
        previous = now
    assert int(final["teacher.num_updates"]) == 2


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_dry_run_lists_its_named_optimizers(name, tmp_path, capsys):
    assert main([f"recipes/{name}.py", *TINY[name], f"trainer.output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in OPTIMIZERS[name]) and not (tmp_path / name).exists()


def test_ijepa_runs_under_fsdp2_with_two_processes(tmp_path):
    """The EMA teacher's inner ViT and the encoder's forward_tokens entry point are gathered by FSDP2: two
    processes train one job (2 steps of 2 x 16 images), one tracked run, one sharded checkpoint."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    output = run([sys.executable, "-m", "sptrack.run", "recipes/ijepa.py", *TINY["ijepa"], "data.batch_size=16",
                  f"trainer.output_dir={tmp_path}", "--devices", "2", "--strategy", "fsdp2", "--tracker", "mlflow",
                  f"tracker.uri={store}"], timeout=240)
    assert output.count("sptrack ijepa: results") == 1
    assert re.search(r"global_step\s*│\s*2\s*│", output)
    assert (tmp_path / "ijepa" / "version_0" / "checkpoints" / "last.ckpt").is_dir()  # a sharded (distributed) checkpoint
    assert [p.name for p in (tmp_path / "ijepa").iterdir()] == ["version_0"]
    client = MlflowClient(store)
    (tracked,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert tracked.info.status == "FINISHED" and tracked.data.params["trainer/world_size"] == "2"
    assert [p.step for p in client.get_metric_history(tracked.info.run_id, "train/loss")] == [0, 1]
    assert [p.step for p in client.get_metric_history(tracked.info.run_id, "hparams/momentum_teacher")] == [0, 1]
    assert 0.0 <= tracked.data.metrics["final/linear_probe_acc"] <= 1.0


def _fit_one_epoch(name: str, overrides: list[str], tmp_path, callbacks: tuple = (), batches: int | None = None) -> tuple:
    """The recipe with ``overrides`` fitted for its (one) epoch in this process, with extra ``callbacks`` and at most
    ``batches`` batches: (experiment, last logged metrics)."""
    from sptrack.module.trainer import Trainer
    from sptrack.recipe.trainer_args import trainer_kwargs

    recipe = load_recipe(f"recipes/{name}.py")
    cfg = recipe.default_config()
    apply_overrides(cfg, [*overrides, f"trainer.output_dir={tmp_path}", "trainer.devices=1", "trainer.num_nodes=1"])
    if batches is not None:
        cfg.trainer.limit_train_batches = batches  # an int (a batch count): an override would read 1 as the fraction 1.0
    pl.seed_everything(0, workers=True, verbose=False)
    experiment = recipe.build_experiment(cfg)
    trainer = Trainer(**trainer_kwargs(cfg), callbacks=[*experiment.callbacks, *callbacks], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(experiment.module, experiment.train_loader)
    return experiment, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_dino_with_koleo_trains_one_epoch_with_the_stated_loss(tmp_path):
    """DINO + w KoLeo of the student's global-view embeddings: loss = DINO + w KoLeo, each logged."""
    _, metrics = _fit_one_epoch("dino", [*COMMON, "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16",
                                         "dino.koleo_weight=0.3"], tmp_path)
    assert math.isclose(metrics["train/loss"], metrics["train/dino"] + 0.3 * metrics["train/koleo"], rel_tol=1e-5)
    assert metrics["train/koleo"] != 0 and metrics["train/dino"] > 0


def test_dino_cnn_out_dim_is_the_embedding_the_head_and_the_probes_read(tmp_path):
    """``model.cnn_out_dim``: a linear map of the pooled CNN features is the embedding; the head, the random-init
    baseline's encoders and the one-epoch run all see that width."""
    experiment, metrics = _fit_one_epoch("dino", [*COMMON, "model.cnn_widths=(8, 16)", "model.cnn_out_dim=8", "model.out_dim=64",
                                                  "model.head_hidden_dim=64", "model.bottleneck_dim=16"], tmp_path)
    images = torch.randn(3, 1, 28, 28)
    assert experiment.encoder(images).shape == (3, 8) and experiment.encoder_factory()(images).shape == (3, 8)
    first = next(m for m in experiment.module.student["head"].modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == 8 and experiment.encoder.fc.weight.shape == (8, 16)
    assert metrics["train/loss"] > 0


def test_ijepa_departures_train_one_epoch_with_the_stated_loss(tmp_path):
    """I-JEPA with SIGReg on the pooled context and centred targets: loss = (1 - w) prediction + w SIGReg; the centre is kept."""
    experiment, metrics = _fit_one_epoch("ijepa", [*IJEPA_PAPER, "ijepa.sigreg_weight=0.25", "ijepa.center_targets=True",
                                                   "ijepa.sigreg_slices=32"], tmp_path)
    assert math.isclose(metrics["train/loss"], 0.75 * metrics["train/prediction"] + 0.25 * metrics["train/sigreg"], rel_tol=1e-5)
    assert metrics["train/sigreg"] > 0 and metrics["train/prediction"] > 0
    center = experiment.module.target_center
    assert bool(center.initialised) and center.center.abs().sum() > 0 and center.center.shape == (49, 32)


def test_ijepa_two_crops_train_one_epoch_with_the_stated_loss(tmp_path):
    """Two crops per image, invariance of their projected pooled contexts and SIGReg on them:
    loss = (1 - w) (p prediction + a invariance) + w SIGReg; the projector trains with the predictor's optimizer;
    ``ijepa.evaluate=context`` exports the context encoder; momentum 0 to 0 leaves the teacher equal to the encoder."""
    experiment, metrics = _fit_one_epoch("ijepa", [*IJEPA_PAPER, "ijepa.views=2", "ijepa.invariance_weight=2.0",
                                                   "ijepa.prediction_weight=0.5", "ijepa.projector_dim=8", "ijepa.sigreg_weight=0.25",
                                                   "ijepa.sigreg_slices=32", "ijepa.evaluate=context", "ijepa.ema_base=0",
                                                   "ijepa.ema_final=0"], tmp_path)
    expected = 0.75 * (0.5 * metrics["train/prediction"] + 2.0 * metrics["train/invariance"]) + 0.25 * metrics["train/sigreg"]
    assert math.isclose(metrics["train/loss"], expected, rel_tol=1e-5)
    assert min(metrics["train/prediction"], metrics["train/invariance"], metrics["train/sigreg"]) > 0
    module = experiment.module
    assert experiment.encoder is module.encoder
    (predictor_optimizer,) = [o for o in module.optimizers() if any(p is module.predictor.mask_token for g in o.param_groups
                                                                      for p in g["params"])]
    trained = {id(p) for g in predictor_optimizer.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in module.projector.parameters())
    assert module.projector[0].weight.shape == (32, 32)  # hidden 4 x 8, from the 32-d pooled context
    for (name, mine), theirs in zip(module.encoder.state_dict().items(), module.teacher.module.state_dict().values()):
        assert torch.equal(mine, theirs), name


class _FirstStep(pl.Callback):
    """Keeps the first training batch (after the recipe's transforms) and copies of the encoder and projector before its step."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        import copy

        if batch_idx == 0:
            self.batch = {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in batch.items()}
            self.encoder, self.projector = copy.deepcopy(module.encoder), copy.deepcopy(module.projector)


def test_ijepa_regularises_the_unmasked_crops_and_local_views(tmp_path):
    """``ijepa.regularise=crop`` with local views: invariance reads an extra pass over the whole global crops plus the
    local crops (not the masked contexts), through one projector call; loss = (1 - w)(p prediction + a invariance) + w SIGReg;
    the context encoder is evaluated."""
    from sptrack.methods import invariance_loss

    first = _FirstStep()
    experiment, metrics = _fit_one_epoch("ijepa", [*TINY["ijepa"], "ijepa.views=2", "ijepa.local_views=2", "ijepa.local_size=12",
                                                   "ijepa.regularise=crop", "ijepa.invariance_weight=2.0", "ijepa.prediction_weight=0.5",
                                                   "ijepa.projector_dim=8", "ijepa.sigreg_weight=0.25", "ijepa.sigreg_slices=32",
                                                   "ijepa.evaluate=context", "ijepa.flip_p=1.0"], tmp_path, callbacks=(first,), batches=1)

    views = first.batch["views"]
    assert [tuple(v.shape[-2:]) for v in views] == [(28, 28), (28, 28), (12, 12), (12, 12)]
    n = len(first.batch["label"])
    with torch.no_grad():
        whole = first.encoder.forward_tokens(torch.cat(views[:2])).mean(1)
        local = first.encoder.forward_tokens(torch.cat(views[2:])).mean(1)
        expected = invariance_loss(first.projector(torch.cat([whole, local])).reshape(4, n, -1), 2)
        keep = first.batch["context_idx"].repeat(2, 1)
        masked = first.encoder.forward_tokens(torch.cat(views[:2]), keep=keep).mean(1)
        from_contexts = invariance_loss(first.projector(torch.cat([masked, local])).reshape(4, n, -1), 2)
    assert math.isclose(metrics["train/invariance"], float(expected), rel_tol=1e-4)
    assert not math.isclose(metrics["train/invariance"], float(from_contexts), rel_tol=1e-2)
    total = 0.75 * (0.5 * metrics["train/prediction"] + 2.0 * metrics["train/invariance"]) + 0.25 * metrics["train/sigreg"]
    assert math.isclose(metrics["train/loss"], total, rel_tol=1e-5)
    assert experiment.encoder is experiment.module.encoder
