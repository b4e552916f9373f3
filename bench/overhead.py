"""Framework overhead: wall time per training step of sptrack.Module vs a hand-written PyTorch loop.

    python bench/overhead.py [--workloads mlp,vit] [--rounds N] [--threads 1] [--quick] [--no-ref]

Workload A (``mlp``, the issue's): 200 steps of an MLP 256->512->512->512->1, batch 64, AdamW
(cosine schedule) for the backbone + SGD with frequency 2 for the head; see :mod:`mlp_workload`.
Besides the hand loop and sptrack it runs plain Lightning with manual optimization (what
Lightning's loop costs by itself) and with automatic optimization, and, when the reference library's
environment exists (``/work/venv-ref`` or ``$SPTRACK_REF_PYTHON``), the same workload through its
Module in that environment (its own hand loop as baseline, see ``bench/overhead_ref.py``).
Workload B (``vit``): the DINO recipe's training step; see :mod:`overhead_vit`.

Trials are interleaved (hand, sptrack, ..., hand, sptrack, ...) after one untimed warm-up of each,
and every ratio is taken within a round, so machine drifts hit all variants alike. Reported: the
median ratio of epoch time (first to last training step) to the hand loop's, its IQR and min-max,
the ms per step, the same ratio in process CPU time (one torch thread: the work done, much less
disturbed by other jobs on a shared machine than wall time), the CPU time per step beyond the hand
loop's (+us/step: the framework's own cost, independent of the model), and the ratio of whole
``fit`` calls (adds Trainer start-up, paid once per job).
Every variant's final weights must equal the hand loop's (``allclose``): proof of identical work.
Writes ``bench/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()
TARGETS = {"mlp": 1.10, "vit": 1.03}
REF_PYTHON = os.environ.get("SPTRACK_REF_PYTHON", "/work/venv-ref/bin/python")


def measure(name: str, variants: dict, data, rounds: int, steps: int) -> dict:
    """Interleave ``variants`` on ``data``; check identical end states; summarise the ratios."""
    print(f"[{name}] {steps} steps/trial, {rounds} rounds, variants: {', '.join(variants)}", flush=True)
    runs = common.interleave({k: (lambda f=f: f(data)) for k, f in variants.items()}, rounds)
    diffs = {}
    for variant, results in runs.items():
        if variant != "hand":
            diffs[variant] = max(
                common.assert_same_work(r["state"], h["state"], f"{name}/{variant} round {i}")
                for i, (r, h) in enumerate(zip(results, runs["hand"]))
            )
    per_step = {k: common.spread([r["epoch_s"] / steps * 1e3 for r in v]) for k, v in runs.items()}
    overhead = {
        k: common.spread([(r["epoch_cpu_s"] - h["epoch_cpu_s"]) / steps * 1e6 for r, h in zip(v, runs["hand"])])
        for k, v in runs.items() if k != "hand"
    }
    return {
        "steps": steps, "rounds": rounds, "target": TARGETS.get(name), "ms_per_step": per_step,
        "epoch_ratio": common.paired_ratios(runs, "hand", "epoch_s"),
        "epoch_cpu_ratio": common.paired_ratios(runs, "hand", "epoch_cpu_s"),
        "fit_ratio": common.paired_ratios(runs, "hand", "fit_s"),
        "overhead_us_per_step": overhead, "max_abs_diff_vs_hand": diffs,
    }


def run_reference(steps: int, rounds: int, threads: int) -> dict:
    """Workload A through the reference library, in its own environment (another torch)."""
    if not Path(REF_PYTHON).exists():
        return {"skipped": f"no reference environment at {REF_PYTHON} (set SPTRACK_REF_PYTHON)"}
    script = Path(__file__).resolve().parent / "overhead_ref.py"
    cmd = [REF_PYTHON, str(script), "--steps", str(steps), "--rounds", str(rounds), "--threads", str(threads)]
    print(f"[mlp/reference] {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    for ln in proc.stdout.splitlines():
        if ln.startswith("  round"):
            print(ln, flush=True)
    if proc.returncode != 0 or not lines:
        return {"skipped": f"reference run failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


HEADER = (f"{'variant':18s} {'ms/step':>8s} {'wall ratio':>10s} {'IQR':>13s} {'min-max':>13s} {'cpu ratio':>9s} "
          f"{'IQR':>13s} {'+us/step':>8s} {'fit ratio':>9s} {'max|diff|':>9s}")


def row(variant: str, res: dict) -> str:
    """One table line: wall and CPU ratios with spread, CPU overhead per step, fit ratio, weight difference."""
    e, c, f, o = (res[k] for k in ("epoch_ratio", "epoch_cpu_ratio", "fit_ratio", "overhead_us_per_step"))
    diff = res["max_abs_diff_vs_hand"]
    return (f"{variant:18s} {res['ms_per_step']['median']:8.2f} {e['median']:9.3f}x {e['q1']:5.3f}-{e['q3']:.3f}x "
            f"{e['min']:5.3f}-{e['max']:.3f}x {c['median']:8.3f}x {c['q1']:5.3f}-{c['q3']:.3f}x {o['median']:8.0f} "
            f"{f['median']:8.3f}x {diff:9.1e}")


def report(name: str, res: dict) -> None:
    """Print one workload's table."""
    print(f"\n{name}: medians over {res['rounds']} rounds of per-round ratios to the hand loop (target <= {res['target']}x);"
          " +us/step: CPU time per step beyond the hand loop's")
    print(HEADER)
    print(f"{'hand':18s} {res['ms_per_step']['hand']['median']:8.2f} {'1.000x':>10s}")
    for variant in res["ms_per_step"]:
        if variant != "hand":
            pick = {k: (v[variant] if isinstance(v, dict) and variant in v else v) for k, v in res.items()}
            pick["ms_per_step"] = res["ms_per_step"][variant]
            print(row(variant, pick))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp,vit")
    parser.add_argument("--rounds", type=int, default=None, help="default 15 (mlp) / 7 (vit); --quick: 4 / 3")
    parser.add_argument("--steps", type=int, default=200, help="mlp steps per trial (the issue's 200)")
    parser.add_argument("--vit-steps", type=int, default=None, help="vit steps per trial (default 16, --quick 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: on a shared 2-core machine a second OpenMP thread stalls whenever another job holds a core)")
    parser.add_argument("--quick", action="store_true", help="few rounds, for development")
    parser.add_argument("--no-ref", action="store_true", help="skip the reference library")
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    common.quiet_lightning()
    import lightning.pytorch  # noqa: F401 - import first so quiet_lightning can override its log level

    common.quiet_lightning()
    env = common.environment()
    print(f"torch threads={threads} cpus={env['cpus']} load(1 min)={env['load_1min']} torch={env['torch']}", flush=True)
    results: dict = {"threads": threads, "workloads": {}}
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if "mlp" in workloads:
        from mlp_workload import Batches
        from overhead_mlp import VARIANTS

        rounds = args.rounds or (4 if args.quick else 15)
        res = measure("mlp", VARIANTS, Batches(args.steps), rounds, args.steps)
        res["reference"] = {"skipped": "--no-ref"} if args.no_ref else run_reference(args.steps, rounds, threads)
        results["workloads"]["mlp"] = res
        report("mlp (workload A)", res)
        ref = res["reference"]
        if "epoch_ratio" in ref:
            print(row("reference library", ref) + f"  (vs its own hand loop: {ref['hand_ms_per_step']['median']:.2f} ms/step, torch {ref['torch']})")
        else:
            print(f"reference library: skipped ({ref['skipped'][:300]})")
    if "vit" in workloads:
        from overhead_vit import VARIANTS as VIT_VARIANTS
        from overhead_vit import make_loader

        steps = args.vit_steps or (6 if args.quick else 16)
        rounds = args.rounds or (3 if args.quick else 6)
        res = measure("vit", VIT_VARIANTS, lambda: make_loader(steps), rounds, steps)
        results["workloads"]["vit"] = res
        report("vit (workload B, DINO step)", res)
    path = common.write_json("overhead", results, Path(args.out))
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
