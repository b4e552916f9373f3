"""Helpers shared by the benchmarks: thread set-up, interleaved trials, robust statistics, JSON output.

Torch-only on purpose (no sptrack, no Lightning at import time): ``bench/overhead_ref.py`` imports it
inside the reference library's separate virtual environment.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def setup_threads(threads: int) -> int:
    """Pin torch's intra-op threads (default: the CPU count) and return the number in use."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def environment() -> dict:
    """What the numbers were measured on (printed and stored with every result)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_1min": load,
        "machine": platform.machine(),
    }


def spread(values: Sequence[float]) -> dict:
    """Median, quartiles (IQR) and min-max of ``values``."""
    xs = sorted(values)
    if len(xs) >= 4:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1, q3 = xs[0], xs[-1]
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


def interleave(trials: Mapping[str, Callable[[], dict]], rounds: int, warmup: int = 1, log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """Run every trial once per round, in the same order (A B C A B C ...), after untimed warm-ups.

    Each trial returns a dict of measurements; the result maps trial name to its list of dicts, one
    per round, so that round ``i`` of two trials can be compared (both saw the same machine state).
    ``gc.collect()`` runs before each trial so one trial's garbage is not collected in another's time.
    """
    for _ in range(warmup):
        for fn in trials.values():
            gc.collect()
            fn()
    out: dict[str, list[dict]] = {name: [] for name in trials}
    for r in range(rounds):
        line = []
        for name, fn in trials.items():
            gc.collect()
            result = fn()
            out[name].append(result)
            if "epoch_s" in result:
                line.append(f"{name} {result['epoch_s']:.3f}s")
        log(f"  round {r + 1}/{rounds}: " + "  ".join(line))
    return out


def paired_ratios(runs: Mapping[str, list[dict]], base: str, key: str = "epoch_s") -> dict[str, dict]:
    """For every trial, the spread of its per-round ratio ``key / base's key`` (same round)."""
    return {
        name: spread([a[key] / b[key] for a, b in zip(results, runs[base])])
        for name, results in runs.items()
        if name != base
    }


def snapshot(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Detached copies of every parameter and buffer of ``modules`` (to compare two runs' end states)."""
    tensors = []
    for m in modules:
        tensors += [p.detach().clone() for p in m.parameters()]
        tensors += [b.detach().clone() for b in m.buffers()]
    return tensors


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Largest absolute element difference between two snapshots of the same modules."""
    if len(a) != len(b):
        raise ValueError(f"snapshots differ in length: {len(a)} vs {len(b)}")
    return max((float((x.double() - y.double()).abs().max()) if x.numel() else 0.0) for x, y in zip(a, b))


def assert_same_work(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], what: str, rtol: float = 1e-5, atol: float = 1e-6) -> float:
    """Assert two end states agree (so both runs did the same work) and return the max difference."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x.dtype.is_floating_point:
            ok = torch.allclose(x, y, rtol=rtol, atol=atol)
        else:
            ok = torch.equal(x, y)
        if not ok:
            raise AssertionError(f"{what}: tensor {i} {tuple(x.shape)} differs from the hand loop's (max abs diff "
                                 f"{float((x.double() - y.double()).abs().max()):.3g}): the runs did not do identical work.")
    return max_abs_diff(a, b)


def write_json(name: str, data: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``data`` (plus the environment and a timestamp) to ``out_dir/name.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def two_form_main(argv, doc: str, name: str, measure_all: Callable[[int], dict], markdown: Callable[[dict, int], str],
                  **extra) -> int:
    """The command line of a side-by-side benchmark of two forms of one computation (``bench/sigreg.py``,
    ``bench/cnn_layout.py``): ``--out DIR [--rounds 7] [--quick]`` (2 rounds). ``measure_all(rounds)`` returns the
    results; they are written with ``markdown(results, rounds)`` and ``extra`` to ``DIR/<name>.json``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    results = measure_all(rounds)
    write_json(name, {"rounds": rounds, **extra, "results": results, "markdown": markdown(results, rounds)}, args.out)
    return 0


def save_figure(fig, path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quiet_lightning() -> None:
    """Silence Lightning's info lines and warnings (e.g. about few dataloader workers); results only."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def add_repo_to_path() -> None:
    """Let ``python bench/x.py`` import sptrack from this checkout (also without an installed package)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
