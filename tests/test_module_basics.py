"""Forward contract, stages, GPU-side transforms, hparams and the optimizer summary."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sptrack
from conftest import DictDataset, loader, make_nets, mse_forward, trainer
from sptrack.errors import ConfigError


def build(forward=mse_forward, **kwargs):
    backbone, head = make_nets()
    return sptrack.Module(forward=forward, backbone=backbone, head=head, **kwargs)


def test_non_dict_batch_is_a_value_error():
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    with pytest.raises(ValueError, match="expects dict batches, got list"):
        trainer().fit(build(), data)


def test_missing_loss_names_the_keys_it_got():
    def no_loss(self, batch, stage):
        return {"embedding": self.backbone(batch["x"]), "logits": 0}

    with pytest.raises(KeyError, match=r"'loss'.*\['embedding', 'logits'\]"):
        trainer().fit(build(no_loss), loader(n=8))


def test_stages_and_batch_idx_reach_forward():
    calls = []

    def recording(self, batch, stage):
        calls.append((stage, batch["batch_idx"]))
        out = self.head(self.backbone(batch["x"]))
        return {"loss": out.pow(2).mean(), "embedding": out.detach()} if stage == "fit" else {"embedding": out}

    m = build(recording)
    t = trainer(max_epochs=1)
    t.fit(m, loader(n=8, batch_size=4), loader(n=4, batch_size=4))
    t.validate(m, loader(n=4, batch_size=4), verbose=False)
    t.test(m, loader(n=4, batch_size=4), verbose=False)
    predictions = t.predict(m, loader(n=8, batch_size=4))
    assert calls == [("fit", 0), ("fit", 1), ("validate", 0), ("validate", 0), ("test", 0), ("predict", 0), ("predict", 1)]
    assert predictions[1]["embedding"].shape == (4, 1)


def test_default_optimizer_and_hparams():
    m = build(hparams={"lr": 0.5, "note": "x"})
    assert m.hparams["lr"] == 0.5
    trainer().fit(m, loader(n=8))
    (row,) = m.optimizer_summary()
    assert (row["class"], row["lr"], row["name"]) == ("AdamW", 1e-3, "default")


def test_forward_is_required():
    backbone, head = make_nets()
    m = sptrack.Module(backbone=backbone, head=head)
    with pytest.raises(NotImplementedError, match="forward=fn"):
        trainer().fit(m, loader(n=8))


def test_summary_table_lists_every_optimizer(capsys):
    optim = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.3, "weight_decay": 1e-4}, "scheduler": "CosineAnnealingLR", "gradient_clip_val": 2.0},
        "head": {"modules": "head", "optimizer": "AdamW", "frequency": 2, "interval": "epoch", "scheduler": "StepLR"},
    }
    m = build(optim=optim)
    trainer(gradient_clip_val=0.5, gradient_clip_algorithm="value").fit(m, loader(n=8))
    rows = m.optimizer_summary()
    assert [(r["index"], r["name"], r["class"], r["frequency"], r["interval"], r["scheduler"]) for r in rows] == [
        (0, "backbone", "SGD", 1, "step", "CosineAnnealingLR"),
        (1, "head", "AdamW", 2, "epoch", "StepLR"),
    ]
    assert rows[0]["weight_decay"] == 1e-4 and rows[0]["num_params"] == 112 and rows[1]["num_params"] == 9
    # Per-optimizer clip overrides the Trainer's; the other inherits the Trainer's value and algorithm.
    assert (rows[0]["gradient_clip_val"], rows[0]["gradient_clip_algorithm"]) == (2.0, "value")
    assert (rows[1]["gradient_clip_val"], rows[1]["gradient_clip_algorithm"]) == (0.5, "value")
    assert type(rows[1]["gradient_clip_algorithm"]) is str  # not Lightning's enum
    out = capsys.readouterr().out
    assert "sptrack optimizers" in out and "AdamW" in out and "backbone" in out


def test_per_optimizer_clipping_is_applied():
    """Clip by value 1e-4 on the head only: every head step moves each weight by at most lr * 1e-4."""
    optim = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 1.0}},
        "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": 1.0}, "gradient_clip_val": 1e-4, "gradient_clip_algorithm": "value"},
    }
    m = build(optim=optim)
    before_head = m.head.weight.detach().clone()
    before_backbone = m.backbone[0].weight.detach().clone()
    trainer().fit(m, loader(n=8, batch_size=4))  # 2 steps
    assert (m.head.weight - before_head).abs().max() <= 2e-4 + 1e-6
    assert (m.head.weight - before_head).abs().max() > 1.9e-4
    assert (m.backbone[0].weight - before_backbone).abs().max() > 1e-3


class Scale(nn.Module):
    """A GPU-side transform with a buffer, to check lazy device placement."""

    def __init__(self, factor):
        super().__init__()
        self.register_buffer("factor", torch.tensor(float(factor)))
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        return {**batch, "x": batch["x"] * self.factor}


def capture_forward(seen):
    def forward(self, batch, stage):
        seen.append((stage, float(batch["x"].abs().sum())))
        out = self.head(self.backbone(batch["x"]))
        return {"loss": out.pow(2).mean()}

    return forward


def test_dataset_gpu_transform_wins_over_datamodule():
    seen = []
    train = DictDataset(8)
    train.gpu_transform = Scale(0.0)

    class DM(pl.LightningDataModule):
        gpu_transform = {"train": Scale(5.0), "val": Scale(2.0)}

        def train_dataloader(self):
            return DataLoader(train, batch_size=8)

        def val_dataloader(self):
            return DataLoader(DictDataset(8), batch_size=8)

    dm = DM()
    trainer(max_epochs=1).fit(build(capture_forward(seen)), datamodule=dm)
    raw_val = float(DictDataset(8).x.abs().sum())
    assert seen[0] == ("fit", 0.0)  # dataset's transform
    assert seen[1][0] == "validate" and seen[1][1] == pytest.approx(2 * raw_val, rel=1e-5)  # DataModule's "val"
    assert train.gpu_transform.calls == 1 and dm.gpu_transform["train"].calls == 0


def test_datamodule_callable_transform_and_passthrough():
    seen = []

    class DM(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.gpu_transform = lambda b: {**b, "x": b["x"] * 0}

        def train_dataloader(self):
            return DataLoader(DictDataset(8), batch_size=8)

    trainer(max_epochs=1).fit(build(capture_forward(seen)), datamodule=DM())
    assert seen == [("fit", 0.0)]
    seen.clear()
    trainer(max_epochs=1).fit(build(capture_forward(seen)), loader(n=8, batch_size=8))
    assert seen[0][1] == pytest.approx(float(DictDataset(8).x.abs().sum()), rel=1e-6)


def test_gpu_transform_on_module_is_rejected():
    with pytest.raises(ConfigError, match="gpu_transform.*dataset"):
        trainer().fit(build(gpu_transform=Scale(1.0)), loader(n=8))


def test_fsdp1_is_rejected_in_setup():
    from lightning.pytorch.strategies import FSDPStrategy

    m = build()

    class Stub:
        strategy = FSDPStrategy.__new__(FSDPStrategy)

    m._trainer = Stub()
    with pytest.raises(ValueError, match="strategy='fsdp2'"):
        m.setup("fit")


def test_dry_run_of_a_recipe_shows_scheduler_arguments_and_monitor(tmp_path, capsys):
    """A recipe's OptimizerEntry reaches the Module as it is; --dry-run shows its scheduler arguments and monitor."""
    from pathlib import Path

    from sptrack.run.cli import main

    recipe = str(Path(__file__).resolve().parent / "tune_helpers" / "tiny_recipe.py")
    argv = [recipe, "optim.head.scheduler=ReduceLROnPlateau", "optim.head.monitor=val_loss", "optim.head.interval=epoch",
            'optim.head.scheduler_args={"patience": 2, "factor": 0.5}', 'optim.backbone.optimizer_args={"eps": 1e-6}',
            f"trainer.output_dir={tmp_path}", "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()

    def row(key):
        return next(line for line in lines if f" {key} " in line)

    assert "2" in row("optim.head.scheduler_args.patience") and "0.5" in row("optim.head.scheduler_args.factor")
    assert "'val_loss'" in row("optim.head.monitor") and "1e-06" in row("optim.backbone.optimizer_args.eps")
    assert any(" head " in line and "ReduceLROnPlateau on val_loss" in line and " epoch " in line for line in lines)  # the plan
    assert not any(tmp_path.iterdir())


def test_per_optimizer_clipping_by_norm_scales_the_whole_gradient_to_the_bound():
    """Clip by norm 1e-3 on the head: one SGD(lr=1) step moves the head by exactly 1e-3 in total L2 norm, along
    the unclipped gradient (a clip by value would change its direction)."""
    optim = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 1.0}},
        "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": 1.0}, "gradient_clip_val": 1e-3, "gradient_clip_algorithm": "norm"},
    }
    reference = build(optim={"optimizer": {"type": "SGD", "lr": 1.0}})
    m = build(optim=optim)
    m.load_state_dict(reference.state_dict())
    batch = next(iter(loader(n=4, batch_size=4)))
    loss = mse_forward(reference, {**batch, "batch_idx": 0}, "fit")["loss"]
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in reference.head.parameters()])
    assert gradient.norm() > 1e-2  # the bound really clips
    before = torch.cat([p.detach().flatten() for p in m.head.parameters()]).clone()
    trainer().fit(m, loader(n=4, batch_size=4))  # 1 step
    moved = before - torch.cat([p.detach().flatten() for p in m.head.parameters()])
    torch.testing.assert_close(moved.norm(), torch.tensor(1e-3), rtol=1e-3, atol=0)  # float32 differences of ~1 around 1e-3
    torch.testing.assert_close(moved / moved.norm(), gradient / gradient.norm(), rtol=0, atol=5e-4)


def test_lars_step_equals_the_formula_by_hand():
    """One LARS step (no momentum): 2-D weights take lr * tc * ||w|| / ||g + wd w|| * (g + wd w); 1-D tensors plain SGD."""
    torch.manual_seed(0)
    w, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, requires_grad=True)
    gw, gb = torch.randn(3, 4), torch.randn(3)
    w.grad, b.grad = gw.clone(), gb.clone()
    w0, b0 = w.detach().clone(), b.detach().clone()
    sptrack.LARS([w, b], lr=0.5, momentum=0.0, weight_decay=0.1, trust_coefficient=0.02).step()
    d = gw + 0.1 * w0
    expected_w = w0 - 0.5 * (0.02 * w0.norm() / (d.norm() + 1e-8)) * d
    torch.testing.assert_close(w.detach(), expected_w, rtol=0, atol=1e-7)
    torch.testing.assert_close(b.detach(), b0 - 0.5 * gb, rtol=0, atol=1e-7)
