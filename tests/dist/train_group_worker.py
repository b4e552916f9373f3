"""Training through the CLI on one rank, then what became of the process group; records what it saw.

Run under torchrun (gloo) as ``train_group_worker.py OUT_DIR CLI_ARGS...``: calls
``sptrack.run.cli.main(CLI_ARGS)`` and writes ``OUT_DIR/rank<R>.json`` with the exit code, whether
the default process group was initialised when ``train`` returned (inside the CLI) and whether it
still is after ``main`` returned. One file per rank because the ranks share torchrun's stdout.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import sptrack.run.train as train_module
from sptrack.run.cli import main

torch.set_num_threads(1)
out, argv = Path(sys.argv[1]), sys.argv[2:]
seen = {}
real_train = train_module.train


def recording_train(*args, **kwargs):
    result = real_train(*args, **kwargs)
    seen["initialized_after_train"] = dist.is_initialized()
    seen["world_size_in_train"] = dist.get_world_size() if dist.is_initialized() else 1
    return result


train_module.train = recording_train  # main imports train from this module when it is called
code = main(argv)
rank = int(os.environ["RANK"])
record = {"rank": rank, "code": code, **seen, "initialized_after_main": dist.is_initialized()}
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(record))
