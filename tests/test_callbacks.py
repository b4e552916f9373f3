"""EMA teacher and online evaluation callbacks, on real Lightning fits on CPU."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import sptrack
from conftest import trainer
from dist.launch import torchrun
from sptrack.callbacks import (
    EMATeacher,
    EMAUpdate,
    OnlineKNN,
    OnlineProbe,
    RankMe,
    cosine_momentum,
    knn_predict,
    rankme,
)
from sptrack.errors import ConfigError
from sptrack.parallel.process_group import close_default_group

DIM, CLASSES = 8, 4
OPTIM = {"backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9}}}


class Clusters(Dataset):
    """Linearly separable Gaussian clusters: x = 3 * e_label + noise, returned as dict samples."""

    def __init__(self, n: int, seed: int, unlabelled: int = 0, noise: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.label = torch.arange(n) % CLASSES
        self.x = 3.0 * nn.functional.one_hot(self.label, DIM).float() + noise * torch.randn(n, DIM, generator=g)
        self.label[:unlabelled] = -1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "label": self.label[i]}


def clusters(n=32, seed=0, batch_size=8, unlabelled=0) -> DataLoader:
    return DataLoader(Clusters(n, seed, unlabelled), batch_size=batch_size, shuffle=False)


def ssl_forward(self, batch, stage):
    """A stand-in for a pretraining loss; the embedding is the backbone's output (or the raw input)."""
    z = self.backbone(batch["x"])
    loss = (z - batch["x"].flip(1)).pow(2).mean()
    emb = batch["x"] if self.raw_embedding else z
    return {"loss": loss, "embedding": emb, "label": batch["label"]}


class GradRecorder(sptrack.Module):
    """Keeps a copy of every backbone gradient right after each backward."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.grads: list[list[torch.Tensor]] = []

    def after_manual_backward(self) -> None:
        self.grads.append([p.grad.clone() for p in self.backbone.parameters()])


def build(raw_embedding=False, teacher=False, cls=sptrack.Module, dropout=0.1, **extra):
    torch.manual_seed(0)
    # Dropout makes any extra use of the global RNG by a callback show up in the gradients.
    backbone = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, DIM))
    modules = {"teacher": EMATeacher(backbone)} if teacher else {}
    return cls(forward=ssl_forward, optim=OPTIM, backbone=backbone, raw_embedding=raw_embedding, embed_dim=DIM, **modules, **extra)


# ---------------------------------------------------------------------------- EMA
def test_cosine_momentum_values():
    assert cosine_momentum(0, 100) == pytest.approx(0.996, abs=1e-12)
    assert cosine_momentum(50, 100) == pytest.approx(0.998, abs=1e-12)
    assert cosine_momentum(100, 100) == pytest.approx(1.0, abs=1e-12)
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12)
    assert cosine_momentum(500, 100) == 1.0 and cosine_momentum(-3, 100) == pytest.approx(0.996)
    assert cosine_momentum(0, 10, base=0.9, final=0.99) == pytest.approx(0.9)
    teacher = EMATeacher(nn.Linear(2, 2), base=0.99)
    assert teacher.momentum_at(0, 10) == pytest.approx(0.99) and teacher.momentum_at(5, 10) == pytest.approx(0.995)


def test_ema_teacher_update_formula_and_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 3))  # moves BatchNorm running statistics
    m = teacher.update(student, step=0, total_steps=10)
    assert m == pytest.approx(0.996)
    for t, s, b in zip(teacher.parameters(), student.parameters(), before):
        assert torch.allclose(t, 0.996 * b + 0.004 * s, atol=1e-7)
    assert torch.equal(teacher.module[1].running_mean, student[1].running_mean), "buffers='copy'"
    assert int(teacher.num_updates) == 1
    assert "num_updates" in teacher.state_dict() and "module.0.weight" in teacher.state_dict()
    with pytest.raises(ConfigError, match="EMATeacher.student"):
        teacher.update(nn.Sequential(nn.Linear(3, 4)), 0, 10)
    pinned = EMATeacher(nn.Dropout(0.5), eval_mode=True).train()
    assert not pinned.module.training and torch.equal(pinned(torch.ones(4)), torch.ones(4))


class Snapshot(Callback):
    """Records the backbone after each optimizer boundary (runs before EMAUpdate in the list)."""

    def __init__(self):
        self.students = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step > self.before:
            self.students.append([p.detach().clone() for p in module.backbone.parameters()])


def test_ema_update_runs_once_per_boundary_with_the_cosine_schedule(recording_logger):
    module = build(teacher=True)
    initial = [p.detach().clone() for p in module.teacher.parameters()]
    snap = Snapshot()
    t = trainer(max_epochs=2, accumulate_grad_batches=2, logger=recording_logger, log_every_n_steps=1,
                callbacks=[snap, EMAUpdate("backbone", "teacher")])
    t.fit(module, clusters(n=40))  # 5 batches per epoch, 10 micro-batches -> 5 boundaries
    assert t.global_step == 5 and int(module.teacher.num_updates) == 5 and len(snap.students) == 5
    expected = initial
    for step, student in enumerate(snap.students):
        m = cosine_momentum(step, 5)
        expected = [m * e + (1 - m) * s for e, s in zip(expected, student)]
    for e, p in zip(expected, module.teacher.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    momenta = [v for _, v in recording_logger.series("hparams/momentum_teacher")]
    assert momenta == pytest.approx([cosine_momentum(s, 5) for s in range(5)], abs=1e-7)


def test_ema_update_bad_attributes():
    module = build(teacher=True)
    with pytest.raises(ConfigError, match="callbacks.EMAUpdate.teacher_attr.*not an EMATeacher"):
        trainer(callbacks=[EMAUpdate("teacher", "backbone")]).fit(module, clusters())
    with pytest.raises(ConfigError, match="callbacks.EMAUpdate.student_attr.*no submodule 'studnet'"):
        trainer(callbacks=[EMAUpdate("studnet", "teacher")]).fit(module, clusters())


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_ema_teacher_resumes_exactly(tmp_path):
    def run(ckpt_path=None, checkpoint=False):
        module = build(teacher=True, dropout=0.0)  # the RNG stream is not part of a checkpoint
        callbacks = [EMAUpdate("backbone", "teacher")]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_on_train_epoch_end=True))
        trainer(max_epochs=2, enable_checkpointing=checkpoint, callbacks=callbacks).fit(module, clusters(n=40), ckpt_path=ckpt_path)
        return module

    straight = run(checkpoint=True)
    ckpt = sorted(tmp_path.glob("epoch=0*.ckpt"))[0]
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert int(saved["teacher.num_updates"]) == 5 and "teacher.module.0.weight" in saved
    resumed = run(ckpt_path=ckpt)
    assert int(resumed.teacher.num_updates) == 10
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.teacher.module[0].weight, build(teacher=True, dropout=0.0).teacher.module[0].weight)


# ---------------------------------------------------------------------------- kNN and RankMe values
def test_knn_predict_is_perfect_on_separable_clusters_and_weights_votes():
    train, val = Clusters(64, seed=0), Clusters(32, seed=1)
    pred = knn_predict(val.x, train.x, train.label, CLASSES, k=5)
    assert torch.equal(pred, val.label)
    # One very close neighbour of class 0 against two farther ones of class 1.
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(query, bank, labels, 2, k=3, temperature=0.07).item() == 0  # weighted vote
    assert knn_predict(query, bank, labels, 2, k=3, temperature=100.0).item() == 1  # ~ majority vote
    assert knn_predict(query, bank, labels, 2, k=50).item() == 0, "k is capped at the bank size"
    # k decides: the nearest entry is class 0, the next four (farther, together heavier) class 1.
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.44], [0.9, -0.44], [0.88, 0.47], [0.88, -0.47]])
    labels = torch.tensor([0, 1, 1, 1, 1])
    assert knn_predict(query, bank, labels, 2, k=1, temperature=1.0).item() == 0
    assert knn_predict(query, bank, labels, 2, k=5, temperature=1.0).item() == 1


def test_rankme_values():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 16, generator=g)
    assert 15.5 < rankme(iso).item() <= 16.0
    rank1 = torch.randn(500, 1, generator=g) @ torch.randn(1, 16, generator=g)
    assert rankme(rank1).item() == pytest.approx(1.0, abs=1e-3)
    two = torch.zeros(4, 8)
    two[0, 0] = two[1, 1] = 3.0  # singular values (3, 3, 0, ...): p = (0.5, 0.5, 0, ...) + eps
    assert rankme(two).item() == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ConfigError, match="embeddings"):
        rankme(torch.zeros(0, 3))


# ---------------------------------------------------------------------------- callbacks in real fits
def test_online_probe_learns_and_has_its_own_optimizer(recording_logger):
    module = build(raw_embedding=True)
    probe = OnlineProbe(num_classes=CLASSES, optimizer={"type": "AdamW", "lr": 0.05})
    t = trainer(max_epochs=6, logger=recording_logger, log_every_n_steps=1, callbacks=[probe])
    t.fit(module, clusters(n=64, seed=0), clusters(n=32, seed=1))
    acc = [v for _, v in recording_logger.series("eval/probe_acc")]
    assert len(acc) == 6 and acc[-1] >= 0.95, acc
    losses = [v for _, v in recording_logger.series("train/probe_loss")]
    assert len(losses) == 48 and losses[-1] < 0.5 * losses[0]
    rows = {r["name"]: r for r in module.optimizer_summary()}
    assert rows["probe"]["class"] == "AdamW" and rows["probe"]["matched_modules"] == ["callbacks_modules.probe"]
    assert rows["probe"]["num_params"] == DIM * CLASSES + CLASSES
    probe_ids = {id(p) for p in module.callbacks_modules["probe"].parameters()}
    assert not any(id(p) in probe_ids for g in t.optimizers[0].param_groups for p in g["params"])
    # The logged accuracy is over the whole validation split.
    with torch.no_grad():
        val = Clusters(32, seed=1)
        pred = module.callbacks_modules["probe"](val.x).argmax(1)
    assert acc[-1] == pytest.approx((pred == val.label).float().mean().item())


def test_online_knn_and_rankme_in_a_fit(recording_logger):
    module = build(raw_embedding=True)
    knn, rank = OnlineKNN(k=5), RankMe()
    t = trainer(max_epochs=2, logger=recording_logger, callbacks=[knn, rank], num_sanity_val_steps=1)
    t.fit(module, clusters(n=64, seed=0), clusters(n=32, seed=1, batch_size=5))
    assert [v for _, v in recording_logger.series("eval/knn_acc")] == [1.0, 1.0], "sanity check (empty bank) logs nothing"
    expected = rankme(Clusters(32, seed=1).x).item()
    assert [v for _, v in recording_logger.series("eval/rankme")] == pytest.approx([expected] * 2, rel=1e-5)
    assert 5.0 < expected < 8.0


def reference_knn_accuracy(bank, bank_labels, queries, labels, k, temperature, classes) -> float:
    """Weighted k-NN accuracy written out in float64 numpy, one query at a time (independent of knn_predict)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    correct = 0
    for query, label in zip(queries, labels):
        sims = bank @ query
        votes = np.zeros(classes)
        for j in np.argsort(-sims, kind="stable")[:k]:
            votes[bank_labels[j]] += np.exp(sims[j] / temperature)
        correct += int(votes.argmax() == label)
    return correct / len(labels)


def test_knn_bank_is_every_training_image_embedded_by_the_evaluated_weights_in_eval_mode(recording_logger):
    """k=20 against the reference: the bank is the 96 training points embedded by the final weights in eval mode
    (BatchNorm running statistics, no dropout), not a buffer of training-mode embeddings of past batches."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(DIM, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, DIM))
    module = sptrack.Module(forward=ssl_forward, optim=OPTIM, backbone=backbone, raw_embedding=False, embed_dim=DIM)
    train, val = Clusters(96, 0, noise=1.5), Clusters(48, 1, noise=1.5)
    t = trainer(max_epochs=2, logger=recording_logger, callbacks=[OnlineKNN()])
    t.fit(module, DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=10))
    backbone.eval()
    with torch.no_grad():
        bank, queries = backbone(train.x).double().numpy(), backbone(val.x).double().numpy()
    expected = reference_knn_accuracy(bank, train.label.numpy(), queries, val.label.numpy(), 20, 0.07, CLASSES)
    assert 0.3 < expected < 1.0, "some queries are misclassified, so a different bank would show"
    assert recording_logger.series("eval/knn_acc")[-1][1] == pytest.approx(expected, abs=1e-7)  # logged in float32; one query is 1/48


def test_knn_bank_size_and_bad_settings():
    module = build(raw_embedding=True)
    knn = OnlineKNN(k=3, bank=Clusters(32, 0), bank_size=5)
    trainer(max_epochs=1).fit(module, clusters(n=32))
    t = trainer(callbacks=[knn])
    t.validate(module, clusters(n=8, seed=1))
    rows = knn.bank_rows(32)
    assert len(rows) == len(set(rows)) == 5 and knn.bank_rows(32) == rows and OnlineKNN().bank_rows(7) == list(range(7))
    train, val = Clusters(32, 0), Clusters(8, 1)
    expected = reference_knn_accuracy(train.x[rows].numpy(), train.label[rows].numpy(), val.x.numpy(), val.label.numpy(), 3, 0.07, CLASSES)
    assert t.callback_metrics["eval/knn_acc"].item() == pytest.approx(expected, abs=1e-7)  # float32; one query is 1/8
    assert expected < 1.0 == reference_knn_accuracy(train.x.numpy(), train.label.numpy(), val.x.numpy(), val.label.numpy(), 3, 0.07, CLASSES)
    for kwargs, key in (({"bank_size": 0}, "bank_size"), ({"k": 0}, "k"), ({"batch_size": 0}, "batch_size"), ({"temperature": 0}, "temperature")):
        with pytest.raises(ConfigError, match=f"callbacks.knn.{key}"):
            OnlineKNN(**kwargs)
    with pytest.raises(ConfigError, match="callbacks.knn.bank: there is no training loader"):
        trainer(callbacks=[OnlineKNN()]).validate(module, clusters(n=8, seed=1))


def test_unlabelled_samples_are_skipped_and_missing_keys_are_named():
    module = build(raw_embedding=True)
    probe = OnlineProbe(num_classes=CLASSES)
    # The first 8 training samples (a whole batch) are unlabelled: a zero probe loss, not NaN.
    trainer(max_epochs=1, callbacks=[probe, OnlineKNN()]).fit(module, clusters(n=32, unlabelled=8), clusters(n=8, seed=1, unlabelled=3))
    assert all(torch.isfinite(p).all() for p in module.callbacks_modules["probe"].parameters())

    def no_label(self, batch, stage):
        z = self.backbone(batch["x"])
        return {"loss": z.pow(2).mean(), "embedding": z}

    # The probe needs labels to train; the kNN bank, embedded at the first evaluation, to vote.
    for callback, key, stage in [(OnlineProbe(num_classes=CLASSES), "probe", "fit"), (OnlineKNN(), "knn", "validate")]:
        torch.manual_seed(0)
        m = sptrack.Module(forward=no_label, optim=OPTIM, backbone=nn.Linear(DIM, DIM), embed_dim=DIM)
        loader = DataLoader([{"x": torch.randn(DIM)} for _ in range(8)], batch_size=4)
        with pytest.raises(ConfigError, match=rf"callbacks\.{key}\.label_key: forward\(batch, stage='{stage}'\) returned no 'label' entry"):
            trainer(callbacks=[callback], num_sanity_val_steps=0).fit(m, loader, loader)
    with pytest.raises(ConfigError, match=r"callbacks\.rankme\.embedding_key: .*no 'feats' entry"):
        trainer(callbacks=[RankMe(embedding_key="feats")]).validate(build(), clusters(n=8))


def test_probe_configuration_errors():
    with pytest.raises(ConfigError, match="callbacks.probe.embed_dim"):
        m = sptrack.Module(forward=ssl_forward, optim=OPTIM, backbone=nn.Linear(DIM, DIM), raw_embedding=True)
        trainer(callbacks=[OnlineProbe(num_classes=CLASSES)]).fit(m, clusters())
    with pytest.raises(ConfigError, match=r"callbacks.probe.embedding_key: 'embedding' must be a \(B, 5\) tensor"):
        trainer(callbacks=[OnlineProbe(num_classes=CLASSES, embed_dim=5)]).fit(build(), clusters())
    with pytest.raises(ConfigError, match="callbacks.probe.num_classes"):
        OnlineProbe(num_classes=1)
    with pytest.raises(ConfigError, match=r"callbacks.x.name: is used by 2 callbacks \(OnlineKNN, RankMe\)"):
        trainer(callbacks=[OnlineKNN(name="x"), RankMe(name="x")]).fit(build(), clusters())


def test_callbacks_leave_encoder_gradients_bitwise_untouched():
    def run(callbacks):
        module = build(teacher=True, cls=GradRecorder)
        t = trainer(max_epochs=2, val_check_interval=2, callbacks=callbacks)
        t.fit(module, clusters(n=32), clusters(n=16, seed=1))
        return module

    plain = run([])
    probed = run([OnlineProbe(num_classes=CLASSES, optimizer={"type": "SGD", "lr": 0.5}), OnlineKNN(k=3), RankMe(),
                  EMAUpdate("backbone", "teacher")])
    assert len(plain.grads) == len(probed.grads) == 8
    for step, (a, b) in enumerate(zip(plain.grads, probed.grads)):
        for ga, gb in zip(a, b):
            assert torch.equal(ga, gb), f"encoder gradient changed at step {step}"
    assert "probe" in probed.callbacks_modules
    assert not torch.equal(probed.teacher.module[0].weight, plain.teacher.module[0].weight), "EMA ran"
    for (name, a), (_, b) in zip(plain.named_parameters(with_callbacks=False), probed.named_parameters(with_callbacks=False)):
        if name.startswith("backbone"):
            assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- two processes (DDP, gloo)
# Each rank gets its own data (use_distributed_sampler=False): the training samples r::2 and
# *unequal* validation shares (20 and 12 samples), so gathering must handle different row counts.
# Overlapping clusters make the kNN result depend on seeing the other rank's bank.
DDP_NOISE, DDP_VAL_SPLIT = 2.0, 20


def _ddp_val_share(rank: int) -> Clusters:
    data = Clusters(32, seed=1, noise=DDP_NOISE)
    keep = slice(0, DDP_VAL_SPLIT) if rank == 0 else slice(DDP_VAL_SPLIT, None)
    data.x, data.label = data.x[keep], data.label[keep]
    return data


def _ddp_worker(out: Path) -> None:
    rank = int(os.environ["RANK"])
    train = Clusters(64, seed=0, noise=DDP_NOISE)
    train.x, train.label = train.x[rank::2], train.label[rank::2]
    module = build(raw_embedding=True, teacher=True, dropout=0.0)
    callbacks = [OnlineProbe(num_classes=CLASSES, optimizer={"type": "AdamW", "lr": 0.05}), OnlineKNN(k=5, bank=Subset(Clusters(64, seed=0, noise=DDP_NOISE), range(63))),
                 RankMe(), EMAUpdate("backbone", "teacher")]
    t = trainer(max_epochs=2, devices=2, strategy="ddp", use_distributed_sampler=False, callbacks=callbacks)
    t.fit(module, DataLoader(train, batch_size=8), DataLoader(_ddp_val_share(rank), batch_size=5))
    torch.save({
        "metrics": {k: float(v) for k, v in t.callback_metrics.items()},
        "probe": {k: v.clone() for k, v in module.callbacks_modules["probe"].state_dict().items()},
        "teacher": {k: v.clone() for k, v in module.teacher.state_dict().items()},
        "global_step": t.global_step,
        "world_size": t.world_size,
    }, out / f"rank{rank}.pt")
    # Left to interpreter exit, gloo's threads sometimes abort a rank after its work succeeded.
    close_default_group()


def test_evaluation_metrics_are_global_under_ddp(tmp_path):
    torchrun(__file__, str(tmp_path), nproc=2, timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["global_step"] == 8
    for key in ranks[0]["probe"]:
        assert torch.equal(ranks[0]["probe"][key], ranks[1]["probe"][key]), "probe weights are synchronised by DDP"
    for key in ranks[0]["teacher"]:
        assert torch.equal(ranks[0]["teacher"][key], ranks[1]["teacher"][key]), "both ranks hold the same teacher"
    assert int(ranks[0]["teacher"]["num_updates"]) == 8
    metrics = ranks[0]["metrics"]
    evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    assert sorted(evals) == ["eval/knn_acc", "eval/probe_acc", "eval/rankme"]
    assert evals == {k: v for k, v in ranks[1]["metrics"].items() if k.startswith("eval/")}, "every rank logs the global values"

    val = Clusters(32, seed=1, noise=DDP_NOISE)
    train = Clusters(64, seed=0, noise=DDP_NOISE)
    probe = nn.Linear(DIM, CLASSES)
    probe.load_state_dict({k.removeprefix("linear."): v for k, v in ranks[0]["probe"].items()})
    with torch.no_grad():
        probe_acc = (probe(val.x).argmax(1) == val.label).float().mean().item()
    assert metrics["eval/probe_acc"] == pytest.approx(probe_acc, abs=1e-6)

    # The bank is the 63 rows given (ranks embed 32 and 31 + one padding row), not the rows each rank trains on.
    knn_acc = (knn_predict(val.x, train.x[:63], train.label[:63], CLASSES, k=5) == val.label).float().mean().item()
    assert metrics["eval/knn_acc"] == pytest.approx(knn_acc, abs=1e-6)
    # The global bank matters: each rank voting against its own half scores differently.
    local = torch.cat([knn_predict(_ddp_val_share(r).x, train.x[r::2], train.label[r::2], CLASSES, k=5) for r in range(2)])
    assert (local == val.label).float().mean().item() != pytest.approx(knn_acc, abs=1e-6)

    assert metrics["eval/rankme"] == pytest.approx(rankme(val.x).item(), rel=1e-5)
    assert rankme(val.x[:DDP_VAL_SPLIT]).item() != pytest.approx(rankme(val.x).item(), rel=1e-3)


if __name__ == "__main__":  # a rank of test_evaluation_metrics_are_global_under_ddp, started by torchrun
    _ddp_worker(Path(sys.argv[1]))
