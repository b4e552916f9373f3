"""EMAUpdate advances the teacher with the student's own optimizer steps (per-optimizer ``frequency``).

Real Lightning fits on CPU. Expected teachers are replayed by hand from the student weights recorded
after each boundary, with the cosine momentum formula re-implemented here.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

import sptrack
from conftest import loader, trainer
from sptrack.callbacks import EMATeacher, EMAUpdate

BASE, FINAL = 0.9, 0.99  # far from 1, so a wrong number of updates moves the teacher visibly


def momentum(t: int, total: int) -> float:
    """The BYOL/DINO cosine schedule, written out independently of sptrack."""
    t = min(max(t, 0), total)
    return FINAL - (FINAL - BASE) * (math.cos(math.pi * t / total) + 1.0) / 2.0


def student_forward(self, batch, stage):
    out = self.student["head"](self.student["backbone"](batch["x"]))
    return {"loss": ((out - batch["y"]) ** 2).mean()}


def build(backbone_frequency: int, head_frequency: int) -> sptrack.Module:
    torch.manual_seed(0)
    student = nn.ModuleDict({"backbone": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)), "head": nn.Linear(8, 1)})
    optim = {
        "backbone": {"modules": "student.backbone", "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9}, "frequency": backbone_frequency},
        "head": {"modules": "student.head", "optimizer": {"type": "SGD", "lr": 0.1}, "frequency": head_frequency},
    }
    return sptrack.Module(forward=student_forward, optim=optim, student=student, teacher=EMATeacher(student, base=BASE, final=FINAL))


def weights(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


class StudentAtBoundaries(Callback):
    """Before EMAUpdate in the list: (boundary, student weights) after each accumulation boundary."""

    def __init__(self):
        self.records: list[tuple[int, list[torch.Tensor]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step > self.before:
            self.records.append((trainer.global_step, weights(module.student)))


class UpdatesAt(Callback):
    """After EMAUpdate in the list: the micro-batches (1-based, over the run) at which the teacher changed."""

    def __init__(self):
        self.micro_batches: list[int] = []
        self.seen = self.count = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += 1
        if int(module.teacher.num_updates) > self.count:
            self.micro_batches.append(self.seen)
        self.count = int(module.teacher.num_updates)


def replay(initial: list[torch.Tensor], records, total: int):
    """The teacher by hand: ``t <- m_b t + (1 - m_b) s_b`` at the boundaries ``b`` where the student moved."""
    teacher, previous, stepped = initial, initial, []
    for boundary, student in records:
        if any(not torch.equal(s, p) for s, p in zip(student, previous)):
            m = momentum(boundary - 1, total)
            teacher = [m * t + (1 - m) * s for t, s in zip(teacher, student)]
            stepped.append(boundary)
        previous = student
    return teacher, stepped


def fit(module, batches: int, accumulate: int = 1, logger=None, **extra):
    record, updates = StudentAtBoundaries(), UpdatesAt()
    initial = weights(module.teacher)
    t = trainer(max_epochs=1, accumulate_grad_batches=accumulate, logger=logger or False, log_every_n_steps=1,
                callbacks=[record, EMAUpdate("student", "teacher"), updates], **extra)
    t.fit(module, loader(n=4 * batches, batch_size=4))
    return t, initial, record.records, updates.micro_batches


def assert_teacher(module, expected):
    for e, p in zip(expected, module.teacher.parameters()):
        torch.testing.assert_close(p, e, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- Module queries
def test_module_reports_owners_and_stepping_optimizers():
    module = build(backbone_frequency=2, head_frequency=3)
    assert module.optimizers_stepping_at(6) == [] and module.optimizers_owning(module.student) == []  # no slots yet
    module.configure_optimizers()
    assert module.optimizers_owning(module.student) == ["backbone", "head"]
    assert module.optimizers_owning(module.student["head"]) == ["head"]
    assert module.optimizers_owning(module.student["backbone"][1]) == []  # Tanh: no parameters
    assert module.optimizers_owning(module.teacher) == []  # frozen copy
    assert [module.optimizers_stepping_at(b) for b in range(1, 7)] == [[], ["backbone"], ["head"], ["backbone"], [], ["backbone", "head"]]


# ---------------------------------------------------------------------------- fits
def test_teacher_follows_the_student_steps_at_frequency_2(recording_logger):
    """Both student optimizers at frequency=2, 8 boundaries: 4 updates, at the boundary's schedule position."""
    module = build(backbone_frequency=2, head_frequency=2)
    t, initial, records, _ = fit(module, batches=8, logger=recording_logger)
    assert t.global_step == 8 and [b for b, _ in records] == list(range(1, 9))
    expected, stepped = replay(initial, records, total=8)
    assert stepped == [2, 4, 6, 8]
    assert int(module.teacher.num_updates) == 4
    assert_teacher(module, expected)
    series = recording_logger.series("hparams/momentum_teacher")
    assert [s for s, _ in series] == [1, 3, 5, 7]  # logged only at updates, at step b - 1
    assert [v for _, v in series] == pytest.approx([momentum(b - 1, 8) for b in (2, 4, 6, 8)], abs=1e-7)


@pytest.mark.parametrize("frequency,boundaries", [(1, list(range(1, 9))), (2, [2, 4, 6, 8]), (3, [3, 6])])
def test_number_of_teacher_updates_is_the_number_of_student_steps(frequency, boundaries):
    """Fails with an update at every boundary (the old behaviour) for frequency > 1."""
    module = build(backbone_frequency=frequency, head_frequency=frequency)
    _, _, _, updates = fit(module, batches=8)
    assert int(module.teacher.num_updates) == len(boundaries) == 8 // frequency
    assert updates == boundaries


@pytest.mark.parametrize("frequencies,boundaries", [((1, 2), list(range(1, 9))), ((2, 3), [2, 3, 4, 6, 8])])
def test_mixed_frequencies_update_whenever_a_part_of_the_student_stepped(frequencies, boundaries):
    module = build(*frequencies)
    _, initial, records, updates = fit(module, batches=8)
    expected, stepped = replay(initial, records, total=8)
    assert stepped == boundaries == updates
    assert int(module.teacher.num_updates) == len(boundaries)
    assert_teacher(module, expected)


def test_accumulation_and_frequency_update_every_4_micro_batches():
    """accumulate_grad_batches=2 and frequency=2: 16 micro-batches, 8 boundaries, 4 updates."""
    module = build(backbone_frequency=2, head_frequency=2)
    t, initial, records, updates = fit(module, batches=16, accumulate=2)
    assert t.global_step == 8 and [b for b, _ in records] == list(range(1, 9))
    assert updates == [4, 8, 12, 16]
    expected, stepped = replay(initial, records, total=8)
    assert stepped == [2, 4, 6, 8] and int(module.teacher.num_updates) == 4
    assert_teacher(module, expected)


class PlainStudent(pl.LightningModule):
    """A LightningModule without the sptrack optimizer queries: one automatic-optimization step per batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(4, 1)
        self.teacher = EMATeacher(self.student, base=BASE, final=FINAL)

    def training_step(self, batch, batch_idx):
        return ((self.student(batch["x"]) - batch["y"]) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


def test_plain_lightning_module_updates_at_every_boundary():
    module = PlainStudent()
    updates = UpdatesAt()
    pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[EMAUpdate("student", "teacher"), updates]).fit(module, loader(n=16, batch_size=4))
    assert int(module.teacher.num_updates) == 4 and updates.micro_batches == [1, 2, 3, 4]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_in_the_middle_of_a_frequency_window_is_exact(tmp_path):
    """frequency=2, 5 boundaries per epoch: the epoch-0 checkpoint (boundary 5) lies between two student steps."""

    def run(ckpt_path=None, checkpoint=False):
        module = build(backbone_frequency=2, head_frequency=2)
        callbacks = [EMAUpdate("student", "teacher")]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_on_train_epoch_end=True))
        trainer(max_epochs=2, enable_checkpointing=checkpoint, callbacks=callbacks).fit(module, loader(n=20, batch_size=4), ckpt_path=ckpt_path)
        return module

    straight = run(checkpoint=True)
    assert int(straight.teacher.num_updates) == 5  # boundaries 2, 4, 6, 8, 10
    ckpt = sorted(tmp_path.glob("epoch=0*.ckpt"))[0]
    assert int(torch.load(ckpt, weights_only=False)["state_dict"]["teacher.num_updates"]) == 2
    resumed = run(ckpt_path=ckpt)
    assert int(resumed.teacher.num_updates) == 5
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
