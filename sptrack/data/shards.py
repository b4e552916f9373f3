"""``ShardedImages``: one split of a WebDataset tar shard set, as collated batches split over ranks and workers.

A shard set is ``manifest.json`` plus tar shards (``python -m sptrack.data.make_shards`` writes one
from an image folder). Reading it needs no random access: every rank and DataLoader worker streams
its own contiguous stretch of the epoch's sample order, so the files can sit on object storage or a
web server (any URL ``webdataset.gopen`` opens).

How an epoch is split, and the trade-off. The epoch order is the shards in a seeded order (``seed +
epoch``; manifest order without ``shuffle``) read one after the other. With ``drop_last`` its first
``R * floor(N / (R*B))`` batches' worth of samples are kept and rank ``r`` of ``R`` takes the
``r``-th contiguous block of them, so every rank yields the same number of batches (DDP needs equal
step counts) and up to ``R*B - 1`` samples at the end of the order are dropped; as the shard order
changes every epoch, so does what is dropped (without ``shuffle`` it is always the same tail).
Without ``drop_last`` every sample is kept, blocks are ``ceil(N / R)`` long and the last ones are
padded with samples whose ``label`` and ``index`` are -1 (what the probe and kNN ignore), at most
``R - 1`` of them. Within a rank, DataLoader worker ``w`` of ``W`` takes a contiguous run of whole
batches of the block. So a rank (or worker) opens only the shards its stretch covers; in the partial
shard at the start of its stretch it streams past the samples before it (a tar has no index) but
does not decode them, and it stops reading at its end. Within each worker's stretch, ``shuffle``
adds a bounded shuffle: the stretch is cut into chunks of ``shuffle_buffer`` samples, each emitted
in a seeded random order; the chunk holds encoded bytes (decoding happens after it), and being
chunked, a resumed epoch can start at any chunk without replaying the ones before it. The order is
a function of ``(seed, epoch, R, W)`` only; the DataLoader hands out the workers' batches round
robin (worker 0, 1, ..., 0, 1, ...; a finished worker is left out), which is what :meth:`resume`
counts on: it works out how many batches of each worker's part were yielded, and hands the part
whose turn is next to worker 0, since a new iterator asks worker 0 first.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from sptrack.data.decode import decode_image, resolve_decoder, to_float
from sptrack.data.encoded import DecodedImageSource, parse_size
from sptrack.errors import ConfigError, suggestion
from sptrack.parallel.collectives import world_and_rank

__all__ = ["FORMAT", "IMAGE_EXTENSIONS", "ShardLoader", "ShardedImages", "read_manifest", "round_robin_position"]
#: The ``format`` entry a manifest must have.
FORMAT = "sptrack-shards/1"
#: Sample entries read as the image, first present wins (PNG and anything not JPEG go to Pillow).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise ConfigError("shards", "reading tar shards needs the webdataset package.", "pip install webdataset") from None
    return webdataset


def _join(root: Union[str, Path], name: str) -> str:
    return str(root).rstrip("/") + "/" + name


def read_manifest(root: Union[str, Path]) -> dict:
    """The parsed ``root/manifest.json`` (``root`` a folder or a URL prefix), checked for the expected format.

    Raises:
        ConfigError (key ``shards.root``): it cannot be opened or is not an ``sptrack-shards/1`` manifest.
    """
    url = _join(root, "manifest.json")
    fix = "Point shards.root at the folder (or URL prefix) holding manifest.json; python -m sptrack.data.make_shards writes one."
    try:
        with _webdataset().gopen(url, "rb") as stream:
            manifest = json.loads(stream.read())
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - gopen's schemes raise anything from OSError to a pipe's IOError
        raise ConfigError("shards.root", f"cannot read {url!r} ({type(err).__name__}: {err}).", fix) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("splits"), dict):
        raise ConfigError("shards.root", f"{url!r} is not an {FORMAT!r} manifest.", fix)
    return manifest


def _positive(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}.")
    return value


def round_robin_position(per_worker: list[int], k: int) -> tuple[list[int], int]:
    """Where a DataLoader's round robin over workers with ``per_worker`` batches is after ``k`` batches.

    Returns how many batches of each worker were among them and the worker whose turn is next (a
    worker that has finished is left out of the turns).
    """
    taken, turn = [0] * len(per_worker), 0
    k = min(k, sum(per_worker))
    while k > 0:
        w = turn % len(per_worker)
        if taken[w] < per_worker[w]:
            taken[w] += 1
            k -= 1
        turn += 1
    return taken, turn % len(per_worker)


class ShardedImages(DecodedImageSource, IterableDataset):
    """One split of a shard set, yielding collated batches: use it in :class:`ShardLoader` (or ``DataLoader(ds, batch_size=None)``).

    Each batch is ``{"image": (B, C, H, W), "label": int64 (B,), "index": int64 (B,)}``: images as
    float32 in [0, 1] (or ``dtype``; uint8 pixels with ``torch.uint8``), ``index`` the sample's
    position in the split in manifest order (shard by shard), ``label`` its "cls" entry (-1 when a
    sample has none). How the epoch is split over ranks and workers is in this module's docstring;
    the world is read when an iteration starts (ShardLoader reads it in the main process).

    Args:
        root: folder or URL prefix holding ``manifest.json``; shard urls are ``root + "/" + url``.
        split: a split of the manifest ("train", "val").
        batch_size: samples per batch (B).
        shuffle: shuffle the shards (with ``seed + epoch``) and, within each worker, chunks of
            ``shuffle_buffer`` samples. Without it the order is the manifest's, every epoch.
        seed: base seed of the order.
        drop_last: drop the end of the epoch order that does not fill a batch on every rank (for
            training); without it (evaluation) every sample is yielded once and ranks are padded.
        size: resize to ``size×size`` or ``(height, width)`` (bilinear); images of a batch must share one size.
        grayscale: decode to 1 channel instead of 3.
        decoder: "auto", "pillow" or "simplejpeg" (see :func:`sptrack.data.decode.resolve_decoder`).
        dtype: ``torch.uint8`` or a float dtype (pixels / 255).
        sample_transform: ``callable(sample, epoch) -> dict`` applied in the worker to each decoded
            sample (``{"image": (C, H, W), "label", "index"}``, padding included); what it returns is
            collated with ``default_collate``.
        shuffle_buffer: samples per shuffled chunk (their encoded bytes are held in memory); 0 or 1
            shuffles only the shards.
        gpu_transform: optional batch-level transform applied by ``sptrack.Module`` on the device.

    Raises:
        ConfigError: key ``shards.root`` (no readable manifest), ``shards.split`` (not in the manifest,
            with close matches), ``shards.<argument>`` for a bad argument.
    """

    def __init__(self, root: Union[str, Path], split: str = "train", batch_size: int = 32, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, size: Optional[Union[int, tuple[int, int]]] = None,
                 grayscale: bool = False, decoder: str = "auto", dtype: torch.dtype = torch.float32,
                 sample_transform: Optional[Callable[[dict, int], dict]] = None, shuffle_buffer: int = 1000,
                 gpu_transform: Optional[Callable[[dict], dict]] = None):
        manifest = read_manifest(root)
        splits = manifest["splits"]
        if split not in splits:
            raise ConfigError("shards.split", f"{str(root)!r} has no split {split!r}.",
                              (suggestion(str(split), splits) or "") + f" Its splits: {', '.join(sorted(splits))}.")
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ConfigError("shards.dtype", f"must be torch.uint8 or a float dtype, got {dtype}.")
        self.root, self.split = str(root), split
        self.batch_size = _positive("shards.batch_size", batch_size, 1)
        self.shuffle_buffer = _positive("shards.shuffle_buffer", shuffle_buffer, 0)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.size, self.grayscale, self.dtype = parse_size(size, "shards.size"), bool(grayscale), dtype
        self.decoder = resolve_decoder(decoder, key="shards.decoder")
        self.sample_transform, self.gpu_transform = sample_transform, gpu_transform
        self.classes = [str(c) for c in manifest.get("classes", [])]
        self.urls = [_join(root, entry["url"]) for entry in splits[split]]
        self.counts = [int(entry["count"]) for entry in splits[split]]
        # offsets[s]: the split position (the "index") of shard s's first sample.
        self.offsets = [0, *itertools.accumulate(self.counts)][:-1]
        self.num_samples = sum(self.counts)
        self.epoch = 0
        self._skip = 0
        self._epoch_pinned = False  # set_epoch/resume chose the next epoch: ShardLoader does not advance it
        self._world: Optional[tuple[int, int]] = None  # the main process's world, set by ShardLoader for its workers
        self._pad_shape: Optional[tuple[int, ...]] = None

    def _world_now(self) -> tuple[int, int]:
        return self._world if self._world is not None else world_and_rank()

    def layout(self, world: Optional[int] = None) -> tuple[int, int]:
        """``(block, batches)`` of each of ``world`` ranks (default: the world now): the samples of a rank's
        block of the epoch order (padding included) and the batches it yields per epoch."""
        world = self._world_now()[0] if world is None else world
        n, b = self.num_samples, self.batch_size
        if self.drop_last:
            batches = n // (world * b)
            return batches * b, batches
        block = math.ceil(n / world)
        return block, math.ceil(block / b)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (every rank the same)."""
        return self.layout()[1]

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration uses."""
        self.epoch, self._epoch_pinned = int(epoch), True

    def resume(self, epoch: int, samples_done: int = 0) -> None:
        """Make the next iteration be epoch ``epoch`` without this rank's first ``samples_done`` samples.

        ``samples_done`` counts whole batches as the loader yielded them (``batches * batch_size``);
        the world size and ``num_workers`` must be those of the interrupted run. Skipped samples are
        not decoded; whole chunks of the shuffle buffer before the resume point are not even read.
        """
        if samples_done < 0 or samples_done % self.batch_size:
            raise ValueError(f"samples_done must be a multiple of batch_size={self.batch_size} and >= 0, got {samples_done}")
        self.set_epoch(epoch)
        self._skip = int(samples_done)

    def state_dict(self) -> dict:
        """``{"seed", "epoch"}``: what decides the order (the position is the loop's to record)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seed`` and ``epoch`` (see :meth:`state_dict`)."""
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def shard_order(self, epoch: int) -> list[int]:
        """Shard ids in the order epoch ``epoch`` reads them."""
        if not self.shuffle:
            return list(range(len(self.urls)))
        return torch.randperm(len(self.urls), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self) -> Iterator[dict]:
        world, rank = self._world_now()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip, self._skip = self._skip, 0
        return self._batches(self.epoch, world, rank, worker, workers, skip)

    def _batches(self, epoch: int, world: int, rank: int, worker: int, workers: int, skip: int) -> Iterator[dict]:
        """The batches of worker ``worker`` of ``workers`` on ``rank``, less the first ``skip`` samples of the rank."""
        block, batches = self.layout(world)
        b = self.batch_size
        per_worker = [(w + 1) * batches // workers - w * batches // workers for w in range(workers)]
        taken, next_turn = round_robin_position(per_worker, skip // b)
        # A new DataLoader iterator asks worker 0 first: after a resume, worker 0 plays the part whose turn
        # it was, worker 1 the next and so on, so the batches come in the order of the uninterrupted epoch.
        part = (next_turn + worker) % workers
        first = part * batches // workers
        lo, hi = first * b, min((first + per_worker[part]) * b, block)  # this part's share of the rank's block
        lo_skip = taken[part] * b
        start = rank * block  # epoch position of the block's first sample
        real_hi = max(lo, min(hi, self.num_samples - start))  # past it the block is padding
        samples = self._decoded(epoch, start + lo, start + real_hi, min(lo_skip, real_hi - lo))
        padding = (self._padding() for _ in range(max(0, hi - max(real_hi, lo + lo_skip))))
        batch = []
        for sample in itertools.chain(samples, padding):
            batch.append(sample if self.sample_transform is None else self.sample_transform(sample, epoch))
            if len(batch) == b:
                yield default_collate(batch)
                batch = []
        if batch:
            yield default_collate(batch)

    def _decoded(self, epoch: int, start: int, stop: int, skip: int) -> Iterator[dict]:
        """Decoded samples of epoch positions ``[start, stop)`` in worker order, less the first ``skip``."""
        for index, entries in self._ordered(epoch, start, stop, skip):
            yield {"image": self._pixels(entries, index), "label": torch.tensor(self._label(entries), dtype=torch.int64),
                   "index": torch.tensor(index, dtype=torch.int64)}

    def _ordered(self, epoch: int, start: int, stop: int, skip: int) -> Iterator[tuple[int, dict]]:
        """Raw ``(index, entries)`` of positions ``[start, stop)``, chunk-shuffled, less the first ``skip`` (not decoded)."""
        chunk = self.shuffle_buffer if self.shuffle and self.shuffle_buffer > 1 else 0
        if not chunk:
            yield from self._raw(epoch, start + skip, stop)
            return
        # Chunks start at ``start``, so the chunks wholly before the resume point are never read.
        first = start + skip // chunk * chunk
        drop = skip - (first - start)
        raw = self._raw(epoch, first, stop)
        for c0 in range(first, stop, chunk):
            held = list(itertools.islice(raw, min(chunk, stop - c0)))
            perm = np.random.default_rng([self.seed % 2**63, epoch, c0]).permutation(len(held))
            for i in perm[drop:]:
                yield held[i]
            drop = 0

    def _raw(self, epoch: int, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        """Raw ``(index, entries)`` of the epoch positions ``[start, stop)``, opening only the shards they cover."""
        pos = 0
        for shard in self.shard_order(epoch):
            if pos >= stop:
                return
            count = self.counts[shard]
            lo, hi = max(start, pos) - pos, min(stop, pos + count) - pos
            if lo < hi:
                yield from self._read_shard(shard, lo, hi)
            pos += count

    def _read_shard(self, shard: int, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        """Samples ``lo..hi-1`` of a shard, grouped by webdataset's own tar iterators; the ones before ``lo``
        are streamed past (a stream cannot seek) but not decoded, and reading stops after ``hi``."""
        wds = _webdataset()
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        url, seen = self.urls[shard], 0
        with wds.gopen(url, "rb") as stream:
            files = ({**entry, "__url__": url} for entry in tar_file_iterator(stream))  # group_by_keys wants each file's url
            for sample in group_by_keys(files):
                if seen >= lo:
                    yield self.offsets[shard] + seen, {k: v for k, v in sample.items() if not k.startswith("__")}
                seen += 1
                if seen == hi:
                    return
        raise ConfigError("shards.root", f"{url!r} holds {seen} samples but the manifest says {self.counts[shard]}.",
                          "Rewrite the shard set (python -m sptrack.data.make_shards) or fix its manifest.json.")

    def _pixels(self, entries: dict, index: int) -> torch.Tensor:
        data = next((entries[ext] for ext in IMAGE_EXTENSIONS if ext in entries), None)
        if data is None:
            raise ConfigError("shards.root", f"sample {index} of split {self.split!r} has no {'/'.join(IMAGE_EXTENSIONS)} entry "
                              f"(it has {', '.join(sorted(entries)) or 'nothing'}).", "Write the images under one of those extensions.")
        image = decode_image(data, self.grayscale, self.decoder, self.size)
        return image if self.dtype == torch.uint8 else to_float(image).to(self.dtype)

    @staticmethod
    def _label(entries: dict) -> int:
        return int(entries["cls"]) if "cls" in entries else -1

    def _padding(self) -> dict[str, Any]:
        """A padding sample: zero image of the decoded shape, label and index -1."""
        if self._pad_shape is None:
            if self.size is not None:
                self._pad_shape = (self.channels, *self.size)
            else:  # images keep their size: take the first one's
                _, entries = next(self._read_shard(0, 0, 1))
                self._pad_shape = tuple(self._pixels(entries, 0).shape)
        minus_one = torch.tensor(-1, dtype=torch.int64)
        return {"image": torch.zeros(self._pad_shape, dtype=self.dtype), "label": minus_one, "index": minus_one.clone()}

    def __repr__(self) -> str:
        return (f"ShardedImages(root={self.root!r}, split={self.split!r}, n={self.num_samples}, shards={len(self.urls)}, "
                f"batch_size={self.batch_size}, classes={self.num_classes})")


class ShardLoader(DataLoader):
    """A DataLoader over :class:`ShardedImages` that advances the epoch by itself.

    DataLoader workers get a copy of the dataset when an iteration starts, so the epoch (and the
    world, read here in the main process) must be set on it before then: each ``iter(loader)`` uses
    the dataset's epoch, and the next one the epoch after, unless ``set_epoch``/``resume``/
    ``load_state_dict`` chose it in between. Workers are not persistent (a persistent worker would
    keep its first copy, and with it epoch 0); ``batch_size`` is None because the dataset batches.
    With ``split_over_ranks=False`` the loader reads the whole split whatever the world (what one
    rank alone needs, e.g. the end-of-run probe on global rank 0).
    """

    def __init__(self, dataset: ShardedImages, num_workers: int = 0, split_over_ranks: bool = True, **kwargs: Any):
        if not isinstance(dataset, ShardedImages):
            raise TypeError(f"ShardLoader reads a ShardedImages, got {type(dataset).__name__}")
        for name in ("batch_size", "persistent_workers", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if kwargs.get(name) not in (None, False):
                raise ValueError(f"ShardLoader sets {name} itself (it is the dataset's to decide); got {name}={kwargs[name]!r}")
            kwargs.pop(name, None)
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False, **kwargs)
        self.split_over_ranks = bool(split_over_ranks)
        self._iterated = False

    def __iter__(self):
        ds = self.dataset
        if self._iterated and not ds._epoch_pinned:
            ds.epoch += 1
        self._iterated, ds._epoch_pinned = True, False
        ds._world = world_and_rank() if self.split_over_ranks else (1, 0)
        try:
            # Creating the iterator starts the workers (or, with none, calls iter(dataset)): they have their copy now.
            iterator = super().__iter__()
        finally:
            ds._world, ds._skip = None, 0
        return iterator
