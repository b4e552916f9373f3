"""Real two-process runs on CPU (gloo): DDP and FSDP2 reproduce a single-process run exactly.

Each distributed run is ``python -m torch.distributed.run --nproc_per_node=2 tests/dist/train_worker.py``
(Lightning detects torchrun's environment and launches nothing itself). Rank r trains on samples
``[r*B, (r+1)*B)`` of every global batch of 2B; the reference is the same script without torchrun,
one process with batch size 2B over the same sample order. The model has two optimizers: "backbone"
(SGD momentum, frequency 1, clip by norm 0.35, active at about half of the steps) and "head" (AdamW,
frequency 2, the Trainer's clip by value 0.05, active at each of its steps), so matching parameters
require gradients averaged (not summed) across ranks before clipping, a global clipping norm under
FSDP2, and the frequency cycle continuing across the epoch end (5 batches per epoch).

With ``accumulate_grad_batches=2`` each rank trains the same samples in two micro-batches per global
batch; gradients must then be synchronised once per accumulation boundary (checked by counting DDP
all-reduces with a communication hook and FSDP2 reduce-scatters) and still equal the reference.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dist.launch import run, torchrun

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DIST = TESTS / "dist"
TIMEOUT_S = 180
ATOL = 1e-5
NPROC = 2

_spec = importlib.util.spec_from_file_location("_sptrack_dist_train_worker", DIST / "train_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

STEPS = worker.MAX_EPOCHS * (worker.NUM_SAMPLES // worker.GLOBAL_BATCH)  # 10 accumulation boundaries
HEAD_STEPS = STEPS // 2  # the frequency-2 optimizer
def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _torchrun(strategy: str, out: Path, *extra: str) -> list[dict]:
    torchrun(DIST / "train_worker.py", "--strategy", strategy, "--out", str(out), *extra, nproc=NPROC, timeout=TIMEOUT_S)
    return [_load(out / f"rank{r}.pt") for r in range(NPROC)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The single-process run (no torchrun: WORLD_SIZE unset), same script, batch size 2B."""
    out = tmp_path_factory.mktemp("reference")
    run([sys.executable, str(DIST / "train_worker.py"), "--out", str(out)], timeout=TIMEOUT_S)
    return _load(out / "rank0.pt")


def test_reference_run_is_meaningful(reference):
    """The comparison can fail: parameters move far more than ATOL and both clippings are active."""
    assert reference["strategy"] == "SingleDeviceStrategy" and reference["world_size"] == 1
    assert reference["global_step"] == STEPS
    assert reference["head_adam_steps"] == [HEAD_STEPS]
    batches = [list(range(s, s + worker.GLOBAL_BATCH)) for s in range(0, worker.NUM_SAMPLES, worker.GLOBAL_BATCH)]
    assert reference["seen_indices"] == batches * worker.MAX_EPOCHS
    assert set(reference["params"]) == {"backbone.0.weight", "backbone.0.bias", "backbone.2.weight",
                                        "backbone.2.bias", "head.weight", "head.bias"}
    for name, final in reference["params"].items():
        moved = (final - reference["initial"][name]).abs().max().item()
        assert moved > 100 * ATOL, f"{name} moved only {moved}"
    assert len(reference["pre_clip_norms"]) == STEPS
    # Clip by norm acts at some steps and not at others (so parameters depend on the gradient scale),
    # and no norm is within 1% of the threshold, where rounding could flip the decision.
    norms = reference["pre_clip_norms"]
    assert sum(n > worker.BACKBONE_CLIP for n in norms) >= 3 and sum(n < worker.BACKBONE_CLIP for n in norms) >= 3
    assert min(abs(n - worker.BACKBONE_CLIP) for n in norms) > 0.01 * worker.BACKBONE_CLIP
    assert len(reference["head_pre_clip_max"]) == HEAD_STEPS
    assert min(reference["head_pre_clip_max"]) > 1.5 * worker.TRAINER_CLIP  # clip by value acts at every head step
    assert reference["clip"] == [("backbone", worker.BACKBONE_CLIP, "norm"), ("head", worker.TRAINER_CLIP, "value")]


def _assert_matches_reference(results: list[dict], reference: dict, strategy_class: str, sharded: bool, accumulate: int = 1) -> None:
    per_rank = worker.GLOBAL_BATCH // NPROC
    for rank, res in enumerate(results):
        where = f"rank {rank}"
        assert res["strategy"] == strategy_class, where
        assert res["world_size"] == NPROC, where
        assert res["sharded"] is sharded, where
        # Each rank saw exactly its half of every global batch of the reference, in order (in
        # `accumulate` micro-batches of equal size).
        expected = [b[rank * per_rank:(rank + 1) * per_rank] for b in reference["seen_indices"]]
        micro = per_rank // accumulate
        assert res["seen_indices"] == [b[i:i + micro] for b in expected for i in range(0, per_rank, micro)], where
        assert res["global_step"] == STEPS == reference["global_step"], where
        assert res["head_adam_steps"] == [HEAD_STEPS], where
        assert res["clip"] == reference["clip"], where
        assert res["params"].keys() == reference["params"].keys(), where
        for name, ref_init in reference["initial"].items():
            assert torch.equal(res["initial"][name], ref_init), f"{where}: initial {name} differs"
        # Gradients averaged over ranks equal the one-process gradient (before clipping).
        torch.testing.assert_close(
            torch.tensor(res["pre_clip_norms"]), torch.tensor(reference["pre_clip_norms"]), rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            torch.tensor(res["head_pre_clip_max"]), torch.tensor(reference["head_pre_clip_max"]), rtol=1e-5, atol=1e-7
        )
        for name, ref_final in reference["params"].items():
            torch.testing.assert_close(
                res["params"][name], ref_final, atol=ATOL, rtol=0, msg=lambda m, n=name: f"{where}, {n}: {m}"
            )


def test_ddp_two_processes_match_single_process(reference, tmp_path):
    results = _torchrun("ddp", tmp_path)
    _assert_matches_reference(results, reference, "DDPStrategy", sharded=False)


def test_reject_fsdp1_refuses_only_fsdp1():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry

    from sptrack.parallel.fsdp2 import FSDP2Strategy, reject_fsdp1

    with pytest.raises(ValueError, match="fsdp2"):
        reject_fsdp1(FSDPStrategy())
    registered = StrategyRegistry.get("fsdp2")
    assert type(registered) is FSDP2Strategy
    for ok in (DDPStrategy(), FSDP2Strategy(), registered):
        reject_fsdp1(ok)


def test_fit_under_fsdp1_is_rejected_by_module_setup():
    """Lightning refuses FSDP1 on CPU itself, so the worker uses a trivial FSDPStrategy subclass to reach our check."""
    output = run([sys.executable, str(DIST / "fsdp1_worker.py")], timeout=TIMEOUT_S)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output[-12000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["error_type"] == "ValueError", result.get("traceback") or output[-12000:]
    assert "FSDP1" in result["message"] and "strategy='fsdp2'" in result["message"]
    assert result["raised_in"][-2:] == ["module/module.py:setup", "parallel/fsdp2.py:reject_fsdp1"], result["traceback"]
    assert result["batches_run"] == 0


@pytest.mark.parametrize(
    "strategy",
    [
        # FSDP2Strategy(data_parallel_size=2) passed as an instance (the worker builds it).
        "fsdp2-explicit",
        # What users write: Trainer(strategy="fsdp2").
        "fsdp2",
    ],
)
def test_fsdp2_two_processes_match_single_process(reference, tmp_path, strategy):
    results = _torchrun(strategy, tmp_path)
    _assert_matches_reference(results, reference, "FSDP2Strategy", sharded=True)


ACCUMULATE = 2
MICRO_BATCHES = STEPS * ACCUMULATE  # 20 per rank, 10 per epoch: epochs end on boundaries


@pytest.mark.parametrize(
    "strategy,strategy_class,sharded,kind,units",
    [
        # One DDP bucket (a 435-parameter model) -> one all-reduce per synchronised backward.
        ("ddp", "DDPStrategy", False, "ddp_allreduce", 1),
        # Two fully_shard units own parameters (backbone, head) -> two reduce-scatters.
        ("fsdp2", "FSDP2Strategy", True, "fsdp2_reduce_scatter", 2),
    ],
)
def test_accumulation_syncs_once_per_boundary_and_matches_single_process(reference, tmp_path, strategy, strategy_class, sharded, kind, units):
    """accumulate_grad_batches=2, frequencies 1 and 2: equal to one process on the global batch, and
    gradients cross ranks only in the backward of micro-batches 2, 4, ..., 20 (not 20 times)."""
    results = _torchrun(strategy, tmp_path, "--accumulate", str(ACCUMULATE))
    _assert_matches_reference(results, reference, strategy_class, sharded=sharded, accumulate=ACCUMULATE)
    boundaries = list(range(ACCUMULATE, MICRO_BATCHES + 1, ACCUMULATE))
    for res in results:
        assert res["accumulate"] == ACCUMULATE and res["num_batches_per_epoch"] == MICRO_BATCHES // worker.MAX_EPOCHS
        assert res["comm_kind"] == kind
        assert res["comm_micro_batches"] == [b for b in boundaries for _ in range(units)]


def test_ddp_sync_always_switch_syncs_every_micro_batch(reference, tmp_path):
    """The benchmark's baseline switch: every micro-batch all-reduces, and the result is the same."""
    results = _torchrun("ddp", tmp_path, "--accumulate", str(ACCUMULATE), "--sync-always")
    _assert_matches_reference(results, reference, "DDPStrategy", sharded=False, accumulate=ACCUMULATE)
    for res in results:
        assert res["comm_micro_batches"] == list(range(1, MICRO_BATCHES + 1))
