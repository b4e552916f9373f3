"""KoLeo: the Kozachenko–Leonenko differential-entropy regulariser (Sablayrolles et al. 2019; DINOv2, Oquab et al. 2023).

On L2-normalised rows ``x_1 .. x_N`` it is ``-(1/N) sum_i log(d_i + eps)`` with ``d_i`` the distance
from ``x_i`` to its nearest other row: minimising it spreads the embeddings uniformly over the
sphere. DINOv2 adds it to the DINO loss on the student's class token of each global view (weight
0.1) and computes it on each GPU's batch; here, under a process group, every row's neighbour is
searched in the global batch, so the value is the single-process value on the whole batch, and
each rank's gradient, averaged over the ranks as DDP does, is its rows of the global gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sptrack.parallel.collectives import global_sum, world_and_rank


def _global_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows in rank order (gradients flow back to their owners) and where this rank's start."""
    world, rank = world_and_rank()
    if world == 1:
        return x, 0
    # Row counts as one small tensor collective (not all_gather_object: no pickling on every step).
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    counts = [int(c) for c in sizes]
    start = sum(counts[:rank])
    # A sum of zero-padded blocks instead of all_gather: the autograd all_reduce is what gloo supports.
    padded = x.new_zeros(sum(counts), x.shape[1])
    padded = padded.index_copy(0, torch.arange(start, start + len(x), device=x.device), x)
    return global_sum(padded), start


class KoLeo(nn.Module):
    """``forward(x)``: the KoLeo loss of ``x`` ``(N, D)``, or the mean over views of ``x`` ``(V, N, D)``.

    Args:
        eps: added to each distance inside the log (DINOv2's 1e-8), so that duplicate rows stay finite.
        sync: search neighbours in the global batch when a process group is active (else this rank's rows only).
    """

    def __init__(self, eps: float = 1e-8, sync: bool = True):
        super().__init__()
        self.eps = eps
        self.sync = sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return torch.stack([self(view) for view in x]).mean()
        if x.dim() != 2 or len(x) < 2:
            raise ValueError(f"KoLeo needs (N, D) or (V, N, D) with N >= 2 rows, got shape {tuple(x.shape)}")
        x = F.normalize(x, dim=-1, eps=self.eps)
        everyone, start = _global_rows(x) if self.sync else (x, 0)
        own = everyone[start : start + len(x)]
        with torch.no_grad():
            similarity = own @ everyone.T
            rows = torch.arange(len(x), device=x.device)
            similarity[rows, start + rows] = -float("inf")  # a row is not its own neighbour
            nearest = similarity.argmax(dim=1)
        distance = (own - everyone[nearest]).norm(dim=-1)
        local = -torch.log(distance + self.eps).sum() / len(everyone)
        return global_sum(local) if self.sync else local
