"""Run a script under ``torch.distributed.run`` (real processes, gloo on CPU) from a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
)


def clean_env() -> dict:
    """The test's environment without any torchrun/SLURM variables, one thread per process, repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: Sequence[str], timeout: float = 180) -> str:
    """Run a command in its own process group; fail the test with its output on error or timeout."""
    proc = subprocess.Popen(
        list(args), cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, args))}\n--- output ---\n{output[-12000:]}")
    if proc.returncode != 0:
        pytest.fail(f"exit code {proc.returncode}: {' '.join(map(str, args))}\n--- output ---\n{output[-12000:]}")
    return output


def torchrun(script: str | Path, *script_args: str, nproc: int = 2, timeout: float = 180) -> str:
    """``python -m torch.distributed.run --nproc_per_node=nproc script ...`` on 127.0.0.1."""
    return run([
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *map(str, script_args),
    ], timeout=timeout)
