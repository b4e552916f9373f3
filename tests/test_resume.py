"""Exact resume: a run resumed from its end-of-epoch-1 checkpoint equals the straight run bit for bit."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import sptrack
from conftest import loader, make_nets, mse_forward, trainer

OPTIM = {
    "backbone": {
        "modules": "backbone",
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": "CosineAnnealingLR",
        "frequency": 2,
    },
    "head": {"modules": "head", "optimizer": {"type": "Adam", "lr": 0.01}, "scheduler": {"type": "CosineAnnealingLR", "eta_min": 1e-4}, "frequency": 3},
}


class WithBuffer(torch.nn.Module):
    """A head with a running buffer, to check buffers resume too."""

    def __init__(self, head):
        super().__init__()
        self.inner = head
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def build():
    backbone, head = make_nets()
    return sptrack.Module(forward=mse_forward, optim=OPTIM, backbone=backbone, head=WithBuffer(head))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_from_epoch_checkpoint_is_exact(tmp_path, accumulate):
    """5 batches per epoch, frequencies 2 and 3: both cycles straddle the epoch end and the checkpoint."""
    data = lambda: loader(n=20, batch_size=4)  # noqa: E731 - 5 batches per epoch
    straight = build()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    t1 = trainer(max_epochs=2, accumulate_grad_batches=accumulate, enable_checkpointing=True, callbacks=[ckpt])
    t1.fit(straight, data())
    epoch1 = sorted(tmp_path.glob("epoch=0*.ckpt"))
    assert len(epoch1) == 1
    saved = torch.load(epoch1[0], weights_only=False)
    assert saved["sptrack"]["micro_batches"] == 5
    assert saved["sptrack"]["pending_grads"], "the mid-cycle gradients must be in the checkpoint"

    resumed = build()
    t2 = trainer(max_epochs=2, accumulate_grad_batches=accumulate)
    t2.fit(resumed, data(), ckpt_path=epoch1[0])

    assert t2.global_step == t1.global_step == 10 // accumulate
    for (name, a), (name_b, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert name == name_b
        assert torch.equal(a, b), f"{name} differs after resume"
    for opt_a, opt_b in zip(t1.optimizers, t2.optimizers, strict=True):
        for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            assert sa.keys() == sb.keys()
            for key in sa:
                assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    for s_a, s_b in zip(t1.lr_scheduler_configs, t2.lr_scheduler_configs, strict=True):
        assert s_a.scheduler.state_dict() == s_b.scheduler.state_dict()
    assert straight.head.calls.item() == resumed.head.calls.item() == 10


def test_resume_without_pending_gradients_differs(tmp_path):
    """Control: dropping the saved mid-cycle gradients breaks exactness (so the test above can fail)."""
    straight = build()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer(max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(straight, loader(n=20, batch_size=4))
    path = sorted(tmp_path.glob("epoch=0*.ckpt"))[0]
    saved = torch.load(path, weights_only=False)
    saved["sptrack"]["pending_grads"] = {}
    torch.save(saved, tmp_path / "broken.ckpt")
    resumed = build()
    trainer(max_epochs=2).fit(resumed, loader(n=20, batch_size=4), ckpt_path=tmp_path / "broken.ckpt")
    assert not torch.equal(straight.head.inner.weight, resumed.head.inner.weight)
