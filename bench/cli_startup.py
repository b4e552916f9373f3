"""CLI start-up: wall time of ``python -m sptrack.run --help`` and of a recipe's ``--help``.

    python bench/cli_startup.py [--runs 10] [--quick]

Each command runs as a fresh subprocess (what a user waits for, interpreter start included); the
commands are interleaved run by run after one untimed warm-up each (file-system caches), and the
median and min-max are reported. Two references put the numbers in context: ``python -c pass``
(the interpreter alone) and ``python -c "import torch"`` (what any command that imports torch pays).
Target: <= 1.5 s. Also records which heavy modules each ``--help`` imported (``-X importtime``
would perturb the timing, so that check is a separate, untimed run). Writes
``bench/results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.5
HEAVY = ("torch", "lightning", "optuna", "mlflow", "wandb", "numpy")


def commands(python: str) -> dict[str, list[str]]:
    """Name -> argv of the commands that are timed."""
    return {
        "python -c pass": [python, "-c", "pass"],
        "import torch": [python, "-c", "import torch"],
        "sptrack.run --help": [python, "-m", "sptrack.run", "--help"],
        "sptrack.run recipes/dino.py --help": [python, "-m", "sptrack.run", "recipes/dino.py", "--help"],
    }


def _env() -> dict:
    # Run from the checkout whether or not sptrack is installed; single-threaded like a user shell.
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def time_once(argv: list[str]) -> float:
    """Seconds from spawn to exit of ``argv`` (output discarded; a failure is an error)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed


def heavy_imports(argv: list[str]) -> list[str]:
    """Which of :data:`HEAVY` a command imported (untimed run with ``-X importtime``)."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = set()
    for line in proc.stderr.splitlines():
        if "|" in line:
            top = line.rsplit("|", 1)[1].strip().split(".")[0]
            if top in HEAVY:
                found.add(top)
    return sorted(found)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="timed runs per command (default 10, --quick 4)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    runs = args.runs or (4 if args.quick else 10)
    cmds = commands(args.python)
    print(f"[cli] {runs} interleaved runs per command after one warm-up; python={args.python}", flush=True)
    for argv_ in cmds.values():
        time_once(argv_)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for r in range(runs):
        for name, argv_ in cmds.items():
            times[name].append(time_once(argv_))
        print(f"  run {r + 1}/{runs}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    summary = {name: common.spread(t) for name, t in times.items()}
    imports = {name: heavy_imports(argv_) for name, argv_ in cmds.items() if "sptrack" in name}
    print(f"\n{'command':38s} {'median':>7s} {'min-max':>13s}  heavy modules imported")
    for name, s in summary.items():
        extra = ", ".join(imports.get(name, [])) or ("-" if name in imports else "")
        print(f"{name:38s} {s['median']:6.2f}s {s['min']:5.2f}-{s['max']:.2f}s  {extra}")
    print(f"target: <= {TARGET_S} s for the sptrack commands")
    result = {"runs": runs, "target_s": TARGET_S, "seconds": summary, "heavy_imports": imports}
    path = common.write_json("cli_startup", result, Path(args.out))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
