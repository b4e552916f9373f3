"""``ResumableSampler``: a shuffling sampler whose order is a function of (seed, epoch) and that can
start an epoch part-way through, so a run resumed from a mid-epoch checkpoint sees exactly the
samples the uninterrupted run would have seen.

torch's ``RandomSampler`` draws each epoch's order from the global RNG when its iterator starts,
and a restarted job has no way to get back to that point of the RNG stream; Lightning's injected
``DistributedSampler`` has a (seed, epoch) order but always starts at the beginning of an epoch.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sized

import torch
from torch.utils.data.distributed import DistributedSampler

from sptrack.parallel.collectives import world_and_rank


class ResumableSampler(DistributedSampler):
    """Shuffled (or ordered) indices of ``dataset``, split over the ranks like ``DistributedSampler``.

    The order of epoch ``e`` is ``torch.randperm`` of a generator seeded with ``seed + e``, the same
    on every rank and in every job; rank ``r`` of ``R`` takes every R-th index starting at ``r``
    (padded by repetition to a multiple of R, or trimmed with ``drop_last``). The world is read
    when an epoch starts, not at construction, so the sampler can be built before the process group
    exists; being a ``DistributedSampler``, Lightning uses it as is instead of injecting its own.

    :meth:`resume` makes the next epoch that starts be ``epoch`` and skip its first
    ``samples_done`` indices of this rank; :meth:`state_dict` / :meth:`load_state_dict` carry
    ``seed`` and ``epoch``. With ``keyed=True`` it yields ``(epoch, index)`` pairs instead of
    indices, for datasets whose samples depend on the epoch.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int = 0, drop_last: bool = False, keyed: bool = False):
        # DistributedSampler.__init__ needs the process group; its attributes are set here instead.
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.keyed = bool(keyed)
        self.epoch = 0
        self._skip = 0

    # num_replicas / rank / num_samples / total_size are what DistributedSampler exposes; here they
    # follow the current process group.
    @property
    def num_replicas(self) -> int:
        """World size at this moment (1 without a process group)."""
        return world_and_rank()[0]

    @property
    def rank(self) -> int:
        """Global rank at this moment (0 without a process group)."""
        return world_and_rank()[1]

    @property
    def num_samples(self) -> int:
        """Indices this rank yields in a full epoch."""
        n, replicas = len(self.dataset), self.num_replicas
        if self.drop_last and n % replicas:
            return math.ceil((n - replicas) / replicas)
        return math.ceil(n / replicas)

    @property
    def total_size(self) -> int:
        """Indices of all ranks together in a full epoch."""
        return self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration uses (Lightning calls this at each epoch start)."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, samples_done: int = 0) -> None:
        """Make the next iteration be epoch ``epoch`` starting after its first ``samples_done`` indices."""
        if samples_done < 0:
            raise ValueError(f"samples_done must be >= 0, got {samples_done}")
        self.epoch = int(epoch)
        self._skip = int(samples_done)

    def epoch_indices(self, epoch: Optional[int] = None) -> list[int]:
        """This rank's full index list of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        total = self.total_size
        if total > n:
            order += (order * math.ceil((total - n) / n))[: total - n]
        order = order[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator:
        skip, self._skip = self._skip, 0
        indices = self.epoch_indices()[skip:]
        if self.keyed:
            # (epoch, index) keys: datasets that draw per-sample randomness in the loader workers
            # (sptrack.data.crops.CroppedViews) seed it from them, whatever worker reads the sample.
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        """``{"seed", "epoch"}``: what decides the order (the position is the loop's to record)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seed`` and ``epoch`` (see :meth:`state_dict`)."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
