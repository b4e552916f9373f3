"""Worker for tests/test_shards.py: one rank of a gloo group reading a shard set through ShardLoader.

``python -m torch.distributed.run --nproc_per_node=2 tests/dist/shards_worker.py SHARDS OUT``. Each
rank reads two epochs of "train" (batch 4, drop_last, shuffled, 2 workers) and one of "val" (batch
4, no drop_last, in order, 2 workers), and writes ``OUT/rank<r>.json`` with, per run, the loader's
length and the ``[index, label]`` pairs of every batch as yielded, and the same epochs resumed after
one batch.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from sptrack.data.shards import ShardedImages, ShardLoader

torch.set_num_threads(1)
shards, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()


def read(loader: ShardLoader) -> list:
    return [[[int(i), int(y)] for i, y in zip(batch["index"], batch["label"])] for batch in loader]


train = ShardLoader(ShardedImages(shards, "train", 4, size=8, shuffle_buffer=5, seed=3), num_workers=2)
val = ShardLoader(ShardedImages(shards, "val", 4, size=8, shuffle=False, drop_last=False), num_workers=2)
result = {
    "world": dist.get_world_size(),
    "train_len": len(train),
    "train": [read(train), read(train)],  # epochs 0 and 1: the loader advances the epoch itself
    "val_len": len(val),
    "val": read(val),
}
# The same epochs resumed after 1 batch of this rank (as a restarted job would): the tails of the above.
resumed = ShardLoader(ShardedImages(shards, "train", 4, size=8, shuffle_buffer=5, seed=3), num_workers=2)
resumed.dataset.resume(1, 4)
result["train_resumed"] = read(resumed)
val.dataset.resume(0, 4)
result["val_resumed"] = read(val)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(result, f)
dist.barrier()
dist.destroy_process_group()
