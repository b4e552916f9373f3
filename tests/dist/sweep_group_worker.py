"""The sweep's process-group lifecycle on one rank: create, broadcast, close; records what it saw.

Run under torchrun (gloo) with an output folder; each rank writes ``rank<R>.json`` there
(``{"rank", "payload", "initialized_after_close"}``). One file per rank because the ranks share
torchrun's stdout, where their lines can interleave.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sptrack.tune.distributed import broadcast_object, close_process_group, init_process_group

torch.set_num_threads(1)
out = Path(sys.argv[1])
world = init_process_group("cpu")
payload = broadcast_object({"number": 3, "params": {"optim.head.lr": 0.01}} if world.is_zero else None, world)
close_process_group(world)
record = {"rank": world.rank, "payload": payload, "initialized_after_close": dist.is_initialized()}
(out / f"rank{world.rank}.json").write_text(json.dumps(record))
