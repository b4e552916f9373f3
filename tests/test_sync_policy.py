"""Gradient sync policy: synchronise only where a window or an epoch ends; distributed resume stays exact.

The real 2-process runs (gloo) are in tests/dist/sync_worker.py: 7 micro-batches per epoch per rank,
accumulate_grad_batches=3, so the first epoch ends inside a window; the exactness of the policy on
longer runs against a single process is tests/test_distributed.py's
``test_accumulation_syncs_once_per_boundary_and_matches_single_process``.
"""

from __future__ import annotations

import pytest
import torch

from dist.launch import torchrun
from sptrack.module.sync import GradientSync, needs_sync
from test_distributed import DIST, TIMEOUT_S


def test_policy_syncs_window_ends_and_epoch_ends_only():
    assert [m for m in range(1, 13) if needs_sync(m, 4, ends_epoch=False)] == [4, 8, 12]
    assert needs_sync(5, 4, ends_epoch=True) and needs_sync(3, 1, ends_epoch=False)


def test_sync_switch_without_a_wrapper_is_inactive():
    sync = GradientSync()
    sync.bind(None, torch.nn.Linear(2, 2))
    assert not sync.active
    sync.release()


@pytest.mark.parametrize("strategy,units", [("ddp", 1), ("fsdp2", 2)])
def test_two_ranks_sync_at_boundaries_and_epoch_end_and_resume_exactly(tmp_path, strategy, units):
    torchrun(DIST / "sync_worker.py", "--strategy", strategy, "--out", str(tmp_path), nproc=2, timeout=TIMEOUT_S)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in ranks:
        # Windows end at 3, 6, 9, 12; epochs at 7 (mid-window) and 14; nothing else synchronises.
        assert res["comm"] == [m for m in (3, 6, 7, 9, 12, 14) for _ in range(units)]
        assert res["comm_resumed"] == [m for m in (9, 12, 14) for _ in range(units)]
        # The run resumed from the mid-window epoch-end checkpoint equals the straight run bit for bit.
        for name, value in res["straight"].items():
            assert torch.equal(value, res["resumed"][name]), name
    if strategy == "ddp":
        # Written after micro-batch 4, inside a window: every rank's own gradients are in it (they differ),
        # and the run resumed from it (mid-epoch) equals the straight run bit for bit.
        res = ranks[0]
        assert len(res["mid_per_rank_keys"]) == 2 and res["mid_per_rank_keys"][0] and res["mid_ranks_differ"]
        for r in ranks:
            for name, value in r["straight"].items():
                assert torch.equal(value, r["resumed_mid"][name]), name
