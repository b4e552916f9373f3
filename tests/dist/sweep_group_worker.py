"""The sweep's process-group lifecycle on one rank: create, broadcast, close; prints what it saw.

Run under torchrun (gloo). Prints ``rank=R got=PAYLOAD initialized_after_close=BOOL``.
"""

import torch
import torch.distributed as dist

from sptrack.tune.distributed import broadcast_object, close_process_group, init_process_group

torch.set_num_threads(1)
world = init_process_group("cpu")
payload = broadcast_object({"number": 3, "params": {"optim.head.lr": 0.01}} if world.is_zero else None, world)
close_process_group(world)
print(f"rank={world.rank} got={payload} initialized_after_close={dist.is_initialized()}", flush=True)
