"""Mixed precision equals hand-written torch AMP loops: fp16 with a GradScaler, and bf16 autocast.

Lightning 2.6 turns ``Trainer(precision="16-mixed", accelerator="cpu")`` into bf16 (it warns that fp16
AMP is unsupported on CPU), so the fp16 runs pass the plugin explicitly:
``MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", ...))``, i.e. fp16 autocast on
CPU with a real GradScaler. Two optimizers (backbone SGD frequency 1 with its own clip by norm, head
AdamW frequency 2 with the Trainer's clip by value), accumulation 2, and an inf multiplied into one
optimizer's gradient at a chosen micro-batch by a tensor hook. The reference is torch's AMP pattern
for several optimizers (unscale_ -> clip -> step each, one update per boundary) with the head's
window summed unscaled (see sptrack/module/scaling.py). Parameters must be bit-identical.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

import sptrack
from conftest import loader, make_nets, trainer

ACCUMULATE = 2
INIT_SCALE = 2.0**10  # small enough that these gradients never overflow fp16 by themselves
BACKBONE_CLIP = 0.5
HEAD_CLIP = 0.05
N_SAMPLES = 48  # 12 micro-batches of 4: 6 boundaries, the head steps at 2, 4, 6


def optim(head_frequency: int = 2) -> dict:
    return {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
                     "gradient_clip_val": BACKBONE_CLIP, "gradient_clip_algorithm": "norm"},
        "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 0.01}, "frequency": head_frequency},
    }


def inject_inf(param: torch.nn.Parameter, when) -> None:
    """Multiply ``param``'s gradient by inf whenever ``when()`` is true (entries that are 0 become nan)."""
    param.register_hook(lambda grad: grad * math.inf if when() else grad)


def forward(self, batch, stage):
    out = self.head(self.backbone(batch["x"]))
    self.out_dtypes.add(out.dtype)
    return {"loss": ((out.float() - batch["y"]) ** 2).mean()}


def build(target: str, inf_at: int | None, head_frequency: int = 2) -> sptrack.Module:
    backbone, head = make_nets()
    module = sptrack.Module(forward=forward, optim=optim(head_frequency), backbone=backbone, head=head)
    module.out_dtypes = set()
    if inf_at is not None:
        # The micro-batch being trained, counted over the whole run (also after a resume).
        inject_inf(getattr(module, target).weight if target == "head" else module.backbone[0].weight,
                   lambda: module.step_state.micro_batches + 1 == inf_at)
    return module


class ScaleTrace:
    """Counts ``scaler.update()`` calls and records the scale after each."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scales: list[float] = []
        update = scaler.update

        def counted(*args, **kwargs):
            update(*args, **kwargs)
            self.scales.append(scaler.get_scale())

        scaler.update = counted


def fp16_plugin() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=INIT_SCALE))


def fit_fp16(module, n: int = N_SAMPLES, max_epochs: int = 1, ckpt_path=None, **kwargs):
    plugin = fp16_plugin()
    trace = ScaleTrace(plugin.scaler)
    t = trainer(max_epochs=max_epochs, accumulate_grad_batches=ACCUMULATE, plugins=[plugin],
                gradient_clip_val=HEAD_CLIP, gradient_clip_algorithm="value", **kwargs)
    t.fit(module, loader(n=n, batch_size=4), ckpt_path=ckpt_path)
    return t, trace


def reference_fp16(target: str, inf_at: int | None, n: int = N_SAMPLES, epochs: int = 1, head_frequency: int = 2):
    """torch's multi-optimizer AMP loop with accumulation and an unscaled frequency window."""
    backbone, head = make_nets()
    opt_b = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9)
    opt_h = torch.optim.AdamW(head.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    micro = 0
    if inf_at is not None:
        inject_inf(head.weight if target == "head" else backbone[0].weight, lambda: micro == inf_at)
    window, scales, head_skipped = None, [], 0
    for _ in range(epochs):
        for batch in loader(n=n, batch_size=4):
            micro += 1
            with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):
                out = head(backbone(batch["x"]))
            loss = ((out.float() - batch["y"]) ** 2).mean()
            scaler.scale(loss / ACCUMULATE).backward()
            if micro % ACCUMULATE:
                continue
            boundary = micro // ACCUMULATE
            scaler.unscale_(opt_b)
            torch.nn.utils.clip_grad_norm_(list(backbone.parameters()), BACKBONE_CLIP)
            scaler.step(opt_b)
            opt_b.zero_grad(set_to_none=True)
            scaler.unscale_(opt_h)
            if boundary % head_frequency:
                params = list(head.parameters())
                window = [p.grad for p in params] if window is None else [w.add_(p.grad) for w, p in zip(window, params)]
                for p in params:
                    p.grad = None
            else:
                finite = window is None or all(bool(torch.isfinite(w).all()) for w in window)
                for p, w in zip(head.parameters(), window or [None] * 2):
                    if w is not None:
                        p.grad.add_(w)
                    p.grad.div_(head_frequency)
                torch.nn.utils.clip_grad_value_(list(head.parameters()), HEAD_CLIP)
                if finite:
                    scaler.step(opt_h)
                else:
                    head_skipped += 1
                opt_h.zero_grad(set_to_none=True)
                window = None
            scaler.update()
            scales.append(scaler.get_scale())
    return backbone, head, scales, opt_h


def assert_same_params(module, backbone, head) -> None:
    for ours, ref in zip([*module.backbone.parameters(), *module.head.parameters()], [*backbone.parameters(), *head.parameters()], strict=True):
        assert torch.equal(ours.detach(), ref.detach()), f"max |diff| {(ours - ref).abs().max().item():.3g}"


def adam_steps(optimizer) -> set[int]:
    return {int(s["step"]) for s in optimizer.state.values()}


@pytest.mark.parametrize(
    "target,inf_at,overflow_boundary",
    [
        # The backbone (first optimizer) overflows at boundary 2, where both optimizers step: the head
        # must still be unscaled with the scale its gradients were computed with.
        ("backbone", 3, 2),
        # The head overflows inside its window (boundary 1, it steps at 2): the scale drops at boundary 1
        # and the head's step at boundary 2 is skipped.
        ("head", 1, 1),
    ],
)
def test_fp16_matches_hand_amp_loop(target, inf_at, overflow_boundary):
    module = build(target, inf_at)
    t, trace = fit_fp16(module)
    backbone, head, ref_scales, ref_opt_h = reference_fp16(target, inf_at)
    boundaries = N_SAMPLES // 4 // ACCUMULATE

    assert module.out_dtypes == {torch.float16}  # the forward really ran in fp16
    assert t.global_step == boundaries
    assert len(trace.scales) == boundaries  # one scaler.update() per boundary, not per optimizer step
    expected = [INIT_SCALE if b < overflow_boundary else INIT_SCALE / 2 for b in range(1, boundaries + 1)]
    assert trace.scales == expected == ref_scales  # halved exactly once, at the overflowing boundary
    assert_same_params(module, backbone, head)
    head_opt = t.optimizers[1]
    skipped = 1 if target == "head" else 0
    assert adam_steps(head_opt) == adam_steps(ref_opt_h) == {boundaries // 2 - skipped}


def test_fp16_without_overflow_matches_and_never_skips():
    module = build("head", None)
    t, trace = fit_fp16(module)
    backbone, head, ref_scales, _ = reference_fp16("head", None)
    assert trace.scales == ref_scales == [INIT_SCALE] * 6
    assert_same_params(module, backbone, head)
    assert adam_steps(t.optimizers[1]) == {3}


def test_fp16_resume_keeps_scale_windows_and_pending_grads(tmp_path):
    """Checkpoint after micro-batch 5 (mid-window, head frequency 3 with two boundaries in its window,
    scale halved at boundary 1): the resumed run equals the straight one bit for bit."""
    straight = build("backbone", 1, head_frequency=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    _, trace1 = fit_fp16(straight, n=20, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt])
    epoch0 = sorted(tmp_path.glob("epoch=0*.ckpt"))[0]
    saved = torch.load(epoch0, weights_only=False)
    assert saved["MixedPrecision"]["scale"] == INIT_SCALE / 2  # Lightning checkpoints the GradScaler
    state = saved["sptrack"]
    assert state["micro_batches"] == 5 and state["pending_grads"]
    assert set(state["scaled_windows"]) == {"head"}  # boundaries 1 and 2, unscaled

    resumed = build("backbone", 1, head_frequency=3)
    _, trace2 = fit_fp16(resumed, n=20, max_epochs=2, ckpt_path=epoch0)
    assert trace1.scales == [INIT_SCALE / 2] * 5 and trace2.scales == [INIT_SCALE / 2] * 3
    for (name, a), (name_b, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert name == name_b
        assert torch.equal(a, b), f"{name} differs after resume"
    backbone, head, _, _ = reference_fp16("backbone", 1, n=20, epochs=2, head_frequency=3)
    assert_same_params(straight, backbone, head)


def test_bf16_mixed_matches_hand_autocast_loop():
    """No scaler: gradients accumulate in param.grad; equal to the hand bf16 loop bit for bit."""
    backbone, head = make_nets()
    module = sptrack.Module(forward=forward, optim=optim(), backbone=backbone, head=head)
    module.out_dtypes = set()
    t = trainer(max_epochs=1, accumulate_grad_batches=ACCUMULATE, precision="bf16-mixed",
                gradient_clip_val=HEAD_CLIP, gradient_clip_algorithm="value")
    t.fit(module, loader(n=N_SAMPLES, batch_size=4))
    assert t.scaler is None and module.out_dtypes == {torch.bfloat16}

    backbone, head = make_nets()
    opt_b = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9)
    opt_h = torch.optim.AdamW(head.parameters(), lr=0.01)
    for micro, batch in enumerate(loader(n=N_SAMPLES, batch_size=4), start=1):
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            out = head(backbone(batch["x"]))
        (((out.float() - batch["y"]) ** 2).mean() / ACCUMULATE).backward()
        if micro % ACCUMULATE:
            continue
        torch.nn.utils.clip_grad_norm_(list(backbone.parameters()), BACKBONE_CLIP)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
        if (micro // ACCUMULATE) % 2 == 0:
            for p in head.parameters():
                p.grad.div_(2)
            torch.nn.utils.clip_grad_value_(list(head.parameters()), HEAD_CLIP)
            opt_h.step()
            opt_h.zero_grad(set_to_none=True)
    assert_same_params(module, backbone, head)


def test_plain_lightning_16_mixed_on_cpu_becomes_bf16():
    """Why the fp16 tests pass the plugin: Lightning 2.6 replaces CPU fp16 AMP by bf16."""
    with pytest.warns(UserWarning, match="bf16-mixed"):
        t = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False, enable_checkpointing=False)
    assert t.precision == "bf16-mixed" and t.scaler is None
