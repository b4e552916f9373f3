"""Exact accumulation, frequency and global_step semantics on a real CPU Trainer."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import sptrack
from conftest import loader, make_nets, mse_forward, trainer


def two_optimizers(backbone_opt, head_opt, head_frequency=1, **extra):
    return {
        "backbone": {"modules": "backbone", "optimizer": backbone_opt, **extra},
        "head": {"modules": "head", "optimizer": head_opt, "frequency": head_frequency},
    }


def params_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "backbone_opt,head_opt",
    [
        ({"type": "SGD", "lr": 0.1, "momentum": 0.9}, {"type": "AdamW", "lr": 0.01, "weight_decay": 0.1}),
        ({"type": "AdamW", "lr": 0.01}, {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ],
)
def test_accumulation_matches_one_big_batch(backbone_opt, head_opt):
    """4 micro-batches of 2 with accumulate_grad_batches=4 == batches of 8, with clipping on, to 1e-6."""
    big = sptrack.Module(forward=mse_forward, optim=two_optimizers(backbone_opt, head_opt), **dict(zip(("backbone", "head"), make_nets())))
    t_big = trainer(max_epochs=2, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    t_big.fit(big, loader(n=32, batch_size=8))

    small = sptrack.Module(forward=mse_forward, optim=two_optimizers(backbone_opt, head_opt), **dict(zip(("backbone", "head"), make_nets())))
    t_small = trainer(max_epochs=2, accumulate_grad_batches=4, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    t_small.fit(small, loader(n=32, batch_size=2))

    assert t_big.global_step == 8
    assert t_small.global_step == 8  # accumulation boundaries, not micro-batches
    start = dict(zip(("backbone", "head"), make_nets()))
    for key, value in params_of(big).items():
        torch.testing.assert_close(params_of(small)[key], value, atol=1e-6, rtol=0)
        module, _, rest = key.partition(".")
        assert not torch.equal(value, start[module].state_dict()[rest]), f"{key} never changed"
    # The Trainer gets its settings back after fit.
    assert t_small.accumulate_grad_batches == 4 and t_small.gradient_clip_val == 0.5


def test_sptrack_trainer_is_drop_in_with_accumulation_and_clipping():
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "AdamW"), **nets)
    t = sptrack.Trainer(
        accelerator="cpu", max_epochs=1, accumulate_grad_batches=4, gradient_clip_val=1.0,
        gradient_clip_algorithm="value", logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )
    assert isinstance(t, pl.Trainer)
    t.fit(module, loader(n=32, batch_size=2))
    assert t.global_step == 4
    summary = {row["name"]: row for row in module.optimizer_summary()}
    assert summary["head"]["gradient_clip_val"] == 1.0
    assert summary["head"]["gradient_clip_algorithm"] == "value"


class ParamTrace(pl.Callback):
    """Record, after every training batch, which optimizer's parameters changed."""

    def __init__(self):
        self.changed = {"backbone": [], "head": []}
        self.global_steps = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = params_of(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = params_of(module)
        for name in self.changed:
            moved = any(not torch.equal(after[k], self.before[k]) for k in after if k.startswith(name))
            if moved:
                self.changed[name].append(len(self.global_steps) + 1)
        self.global_steps.append(trainer.global_step)


def test_frequency_steps_exactly_on_its_boundaries_across_epochs():
    """frequency=3 with 5 batches per epoch: steps on global batches 3, 6, 9 (cycle crosses epochs)."""
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "SGD", head_frequency=3), **nets)
    trace = ParamTrace()
    t = trainer(max_epochs=2, callbacks=[trace])
    t.fit(module, loader(n=20, batch_size=4))
    assert trace.changed["head"] == [3, 6, 9]
    assert trace.changed["backbone"] == list(range(1, 11))
    assert trace.global_steps == list(range(1, 11))
    assert t.global_step == 10


def test_frequency_with_accumulation_counts_boundaries():
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "SGD", head_frequency=2), **nets)
    trace = ParamTrace()
    t = trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[trace])
    t.fit(module, loader(n=32, batch_size=4))  # 8 micro-batches -> 4 boundaries
    assert trace.changed["backbone"] == [2, 4, 6, 8]
    assert trace.changed["head"] == [4, 8]
    assert trace.global_steps == [0, 1, 1, 2, 2, 3, 3, 4]


def test_max_steps_counts_boundaries():
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "SGD", head_frequency=2), **nets)
    trace = ParamTrace()
    t = trainer(max_epochs=-1, max_steps=3, accumulate_grad_batches=2, callbacks=[trace])
    t.fit(module, loader(n=40, batch_size=4))
    assert t.global_step == 3
    assert len(trace.global_steps) == 6


def test_frequency_steps_on_the_mean_gradient_of_its_window():
    """The head (frequency 3, plain SGD) must equal a hand loop stepping on the mean of 3 gradients."""
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers({"type": "SGD", "lr": 0.1}, {"type": "SGD", "lr": 0.3}, head_frequency=3), **nets)
    trainer(max_epochs=1).fit(module, loader(n=24, batch_size=4))  # 6 batches

    backbone, head = make_nets()
    data = list(loader(n=24, batch_size=4))
    head_grads = [torch.zeros_like(p) for p in head.parameters()]
    for i, batch in enumerate(data, start=1):
        loss = ((head(backbone(batch["x"])) - batch["y"]) ** 2).mean()
        backbone.zero_grad()
        head.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in backbone.parameters():
                p -= 0.1 * p.grad
            for acc, p in zip(head_grads, head.parameters(), strict=True):
                acc += p.grad
            if i % 3 == 0:
                for acc, p in zip(head_grads, head.parameters(), strict=True):
                    p -= 0.3 * acc / 3
                    acc.zero_()
    for ours, ref in zip(module.head.parameters(), head.parameters(), strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    for ours, ref in zip(module.backbone.parameters(), backbone.parameters(), strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_after_manual_backward_runs_once_per_batch_with_gradients_present():
    seen = []

    class Hooked(sptrack.Module):
        def after_manual_backward(self):
            seen.append(all(p.grad is not None for p in self.backbone.parameters()))

    nets = dict(zip(("backbone", "head"), make_nets()))
    trainer(max_epochs=1).fit(Hooked(forward=mse_forward, optim=two_optimizers("SGD", "SGD"), **nets), loader(n=12, batch_size=4))
    assert seen == [True, True, True]


class PeekEstimate(pl.Callback):
    """Records ``trainer.estimated_stepping_batches`` when training starts."""

    def on_train_start(self, trainer, module):
        self.estimate = trainer.estimated_stepping_batches


def test_plain_lightning_trainer_with_accumulation_is_refused():
    """Its estimated_stepping_batches would count micro-batches: a clear error naming the fix instead."""
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "SGD"), **nets)
    t = pl.Trainer(accelerator="cpu", max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(sptrack.ConfigError, match="accumulate_grad_batches: a plain lightning.pytorch.Trainer .* Use sptrack.Trainer"):
        t.fit(module, loader(n=8, batch_size=4))


@pytest.mark.parametrize("trainer_class", [sptrack.Trainer])
@pytest.mark.parametrize("max_steps,expected", [(-1, 7), (5, 5)])
def test_estimated_stepping_batches_counts_boundaries_on_plain_and_sptrack_trainers(trainer_class, max_steps, expected):
    """10 batches per epoch, accumulate 4, 3 epochs: cycles run across epochs, so 30 // 4 = 7 boundaries
    (Lightning's per-epoch count would say ceil(10 / 4) * 3 = 9, and 30 without the take-over)."""
    nets = dict(zip(("backbone", "head"), make_nets()))
    module = sptrack.Module(forward=mse_forward, optim=two_optimizers("SGD", "SGD", head_frequency=2), **nets)
    peek = PeekEstimate()
    t = trainer_class(accelerator="cpu", max_epochs=3, max_steps=max_steps, accumulate_grad_batches=4, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[peek])
    t.fit(module, loader(n=40, batch_size=4))
    assert peek.estimate == expected == t.global_step
    assert t.estimated_stepping_batches == expected  # also after fit, with the Trainer's settings handed back


def test_plain_lightning_module_keeps_lightnings_estimate():
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.net(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    peek = PeekEstimate()
    t = trainer(max_epochs=3, accumulate_grad_batches=4, callbacks=[peek])
    t.fit(Plain(), loader(n=40, batch_size=4))
    assert peek.estimate == 9 == t.global_step  # Lightning's own: ceil(10 / 4) per epoch
