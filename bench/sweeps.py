"""Sweeps: what predicts a trial's end, and whether pruning keeps the best, over repeated studies.

    python bench/sweeps.py --out DIR [--quick] [--repeats 5] [--trials 12] [--steps 300] [--report-every 30] [--jobs 2]

Every study runs through the sweep runner of ``sptrack.run --sweep`` (``run_sweep``: a real SQLite
storage, the recipe's own search space, trials evaluated on the validation images carved out of the
training split, ``data.validation_fraction`` 0.1; the held-out split is never looked at). The
workload is a small LeJEPA (ViT 32-dim, depth 2, 2+2 views, 256 SIGReg slices) on MNIST-5k, batches
of 64, ``--steps`` optimizer steps per trial, every evaluation signal recorded every
``--report-every`` steps (online kNN, online linear probe, RankMe on the validation images, and the
mean training loss since the previous report).

1. **Signals**: ``--repeats`` unpruned studies with the random sampler (seeds 0..R-1). Over all their
   trials, the rank correlation of each signal (and its slope) at 10-50 % of a trial with the final
   validation kNN accuracy (the objective).
2. **Pruners, replayed exactly**: with the random sampler a pruned study is the unpruned one cut
   short (same parameters, deterministic curves), so every candidate pruner (median, successive
   halving, Hyperband; prune metric; warm-up) is replayed on each repeat with a real Optuna pruner.
   The default is the candidate meeting the goal (within 0.5 points of the unpruned best in >= 80 %
   of repeats with <= 50 % of the steps) with the fewest steps. One real pruned study (seed 0) checks
   the replay.
3. **TPE**: ``--repeats`` unpruned and pruned (chosen pruner) studies with TPE, run for real (TPE
   learns from pruned trials, so nothing can be replayed).

Writes ``DIR/sweeps.json`` (with a ``"markdown"`` section) and ``DIR/sweeps.png`` (best-so-far vs
cumulative steps). Full mode: about 35 minutes with 2 jobs on 2 cores; ``--quick``: a pipeline check
(2 repeats of 4 tiny trials, about 3 minutes).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import sweep_analysis as analysis  # noqa: E402

common.add_repo_to_path()

GOAL_SHARE, GOAL_RATIO = 0.8, 0.5
SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.batch_size=64", "model.proj_hidden_dim=128",
         "model.proj_dim=32", "lejepa.n_local=2", "lejepa.num_slices=256", "trainer.max_epochs=1000", "trainer.log_every_n_steps=10"]
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "data.batch_size=32", "data.val_batch_size=250",
        "model.proj_hidden_dim=32", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=64", "trainer.max_epochs=1000",
        "trainer.log_every_n_steps=1", "data.subset=640"]
SIGNALS = ["eval/knn_acc", "eval/probe_acc", "eval/rankme", "train/loss",
           "eval/knn_acc:slope", "eval/probe_acc:slope", "eval/rankme:slope", "train/loss:slope"]
PRUNE_METRICS = ["eval/knn_acc", "eval/probe_acc", "eval/rankme"]
WARMUPS = [0.0, 0.1, 0.2, 0.3, 0.5]
PRUNERS = ["median", "halving", "hyperband"]
STARTUP = 3


def run_study(job: dict) -> dict:
    """One study in this (spawned) process; its trials with their signals, in trial order."""
    common.setup_threads(1)
    common.quiet_lightning()
    import optuna

    import sptrack
    from sptrack.recipe.config import apply_overrides
    from sptrack.recipe.loading import load_recipe
    from sptrack.tune.options import SweepOptions
    from sptrack.tune.study import run_sweep

    sptrack.Module._print_summary = lambda self: None  # one line per trial, not an optimizer table per trial
    work = Path(job["work"]) / job["name"]
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    recipe = load_recipe("lejepa")
    cfg = recipe.default_config()
    apply_overrides(cfg, job["overrides"] + [f"trainer.max_steps={job['steps']}", f"trainer.output_dir={work}"])
    cfg.tracker.kind = "none"
    storage = f"sqlite:///{work / 'study.db'}"
    opts = SweepOptions(trials=job["trials"], storage=storage, study=job["name"], sampler=job["sampler"], pruner=job["pruner"],
                        prune_every=job["every"], prune_startup=STARTUP, prune_warmup=job["warmup"], prune_metric=job["metric"],
                        sampler_seed=job["seed"])
    started = time.perf_counter()
    if run_sweep(recipe, cfg, opts, argv=[]) != 0:
        raise RuntimeError(f"study {job['name']} failed")
    study = optuna.load_study(study_name=job["name"], storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "steps": int(t.user_attrs.get("last_step", 0)),
               "params": t.params, "signals": t.user_attrs.get("signals", {}), "heldout": t.user_attrs.get("heldout_value")}
              for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    return {**job, "wall_s": round(time.perf_counter() - started, 1), "trials": trials}


def run_jobs(jobs: list[dict], processes: int) -> list[dict]:
    """Studies in parallel processes (one torch thread each); results in job order."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(run_study, jobs, chunksize=1)


def pruned_name(name: str) -> str:
    """The name of the pruned twin of study ``name`` (``random-3`` -> ``random-pruned-3``)."""
    kind, _, seed = name.rpartition("-")
    return f"{kind}-pruned-{seed}"


def candidates(studies: list[dict], every: int, steps: int) -> dict[str, dict]:
    """Every pruner x metric x warm-up, replayed on every random-sampler repeat."""
    out = {}
    for pruner in PRUNERS:
        for metric in PRUNE_METRICS:
            for warmup in WARMUPS:
                verdicts = []
                for s in studies:
                    unpruned = analysis.summarize(s["trials"])
                    pruned = analysis.replay(s["trials"], pruner, metric, every, STARTUP, warmup, steps, pruned_name(s["name"]))
                    verdicts.append(analysis.verdict(unpruned, pruned))
                out[f"{pruner} {metric} warmup={warmup}"] = {"pruner": pruner, "metric": metric, "warmup": warmup,
                                                             **analysis.score(verdicts), "per_repeat": verdicts}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    parser.add_argument("--quick", action="store_true", help="2 repeats of 4 tiny trials: a pipeline check, not a result")
    parser.add_argument("--repeats", type=int, default=None, help="sampler seeds per study kind (default 5; 2 with --quick)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 12; 4 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default 300; 20 with --quick)")
    parser.add_argument("--report-every", type=int, default=None, help="steps between evaluations (default 30; 5 with --quick)")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once, one torch thread each (default 2: the cores)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    trials = args.trials or (4 if args.quick else 12)
    steps = args.steps or (20 if args.quick else 300)
    every = args.report_every or (5 if args.quick else 30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sptrack-sweeps-")
    base = {"work": work, "trials": trials, "steps": steps, "every": every, "overrides": TINY if args.quick else SMALL}
    started = time.perf_counter()

    def job(name: str, sampler: str, seed: int, pruner: str = "none", metric: str = "eval/knn_acc", warmup: float = 0.0) -> dict:
        return {**base, "name": name, "sampler": sampler, "seed": seed, "pruner": pruner, "metric": metric, "warmup": warmup}

    print(f"sweeps benchmark: {repeats} repeats x {trials} trials x {steps} steps, {args.jobs} jobs, work dir {work}", flush=True)
    random_studies = run_jobs([job(f"random-{r}", "random", r) for r in range(repeats)], args.jobs)
    every_trial = [t for s in random_studies for t in s["trials"]]
    points = {max(every, int(round(steps * f / every)) * every) for f in (0.1, 0.2, 0.3, 0.4, 0.5)}
    table = analysis.correlation_table(every_trial, SIGNALS, sorted(points))
    options = candidates(random_studies, every, steps)
    chosen = analysis.choose(options, GOAL_SHARE, GOAL_RATIO)
    pick = options[chosen]
    print(f"chosen pruner: {chosen} ({pick['within']}/{pick['repeats']} within 0.5 points, {100 * pick['mean_steps_ratio']:.0f} % of the steps)",
          flush=True)
    pruned_jobs = [job("random-pruned-0", "random", 0, pick["pruner"], pick["metric"], pick["warmup"])]
    tpe_jobs = [job(f"tpe-{r}", "tpe", r) for r in range(repeats)]
    tpe_jobs += [job(f"tpe-pruned-{r}", "tpe", r, pick["pruner"], pick["metric"], pick["warmup"]) for r in range(repeats)]
    later = run_jobs(pruned_jobs + tpe_jobs, args.jobs)
    real_pruned, tpe = later[0], later[1:]
    replayed = analysis.replay(random_studies[0]["trials"], pick["pruner"], pick["metric"], every, STARTUP, pick["warmup"], steps,
                               real_pruned["name"])
    replay_check = {"same_states": [t["state"] for t in real_pruned["trials"]] == [t["state"] for t in replayed["trials"]],
                    "same_steps": [t["steps"] for t in real_pruned["trials"]] == [t["steps"] for t in replayed["trials"]],
                    "real_best": analysis.summarize(real_pruned["trials"])["best"], "replayed_best": replayed["best"]}
    tpe_verdicts = [analysis.verdict(analysis.summarize(tpe[r]["trials"]), analysis.summarize(tpe[repeats + r]["trials"])) for r in range(repeats)]
    data = {"quick": args.quick, "repeats": repeats, "trials": trials, "steps": steps, "report_every": every, "startup": STARTUP,
            "goal": {"share": GOAL_SHARE, "steps_ratio": GOAL_RATIO, "margin": analysis.MARGIN},
            "correlations": table, "candidates": options, "chosen": chosen,
            "random_chosen": pick, "replay_check": replay_check, "tpe": analysis.score(tpe_verdicts), "tpe_per_repeat": tpe_verdicts,
            "studies": random_studies + later, "total_s": round(time.perf_counter() - started, 1), "plot": "sweeps.png"}
    from sweep_report import markdown, plot

    data["markdown"] = markdown(data)
    plot(data, out / "sweeps.png")
    path = common.write_json("sweeps", data, out)
    print(f"\n{data['markdown']}\nwrote {path} and {out / 'sweeps.png'} ({data['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
