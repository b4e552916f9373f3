"""Sweeps: a fixed-budget Optuna study with and without pruning, best objective vs training steps spent.

    python bench/sweeps.py --out DIR [--quick] [--trials 16] [--steps 50] [--prune-every 10]
                           [--sampler random] [--recipe lejepa] [--threads 1]

Two studies of ``--trials`` trials each run through the sweep runner of ``sptrack.run --sweep``
(``sptrack.tune.study.run_sweep``: a real SQLite storage, the recipe's own search space, the
:class:`~sptrack.tune.pruning.TrialMonitor` reporting ``eval/knn_acc`` every ``--prune-every``
optimizer steps), one with ``--pruner none`` and one with ``--pruner median``, on the same sampler
with the same seed. The default sampler is ``random``: its draws do not depend on earlier results,
so trial ``i`` has the same parameters in both studies and the difference is the pruner's alone
(TPE would also learn differently from pruned trials); ``--sampler tpe`` measures both effects.

The objective is the sweeps' default, ``eval/knn_acc`` (online kNN on the held-out split) after the
trial's last step, over the recipe's own search space (each optimizer's lr x0.1..x10 and frequency
1 or 2), with a small LeJEPA (ViT 32-dim, depth 2, 2+2 views, 256 SIGReg slices; ``--recipe dino``
for a small DINO) on MNIST-5k, batches of 64 shuffled over the 4,000 training images, ``--steps``
optimizer steps per trial. LeJEPA is the default because its final kNN accuracy reflects learning
(0.32-0.48 over 16 trials here, best at the higher learning rates), where DINO's stayed within
0.30-0.38, its best trial the one with the lowest backbone learning rate (least moved from the random init). Steps
spent = each trial's ``last_step`` (the global step it stopped at: pruned trials count only the
steps they ran). The markdown also gives, over the unpruned trials, the rank correlation of each
step's reported value with the final value (what the pruner relies on) and, when the pruned study
missed the unpruned best, at which step and value that trial was pruned.

Reported: each study's best value and total steps; the steps the pruned study needed to first reach
the unpruned best (cumulative, in trial order); that as a fraction of the unpruned study's total
(target <= 50 %) and of the steps the unpruned study needed to reach its own best. Writes
``DIR/sweeps.json`` (with a ``"markdown"`` section) and ``DIR/sweeps.png``.
Expected time, full mode: about 2 minutes (2.2 min measured for LeJEPA and for DINO, 1 thread, on this
machine shared with other jobs, load 3-5). ``--quick``: 6 tiny trials (under a minute).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

TARGET = 0.5
SEED = 0
# Small models: the sweep is about steps and ranking, and 2 x 16 trials must fit in about 3 minutes.
COMMON_SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.batch_size=64", "trainer.max_epochs=1",
                "trainer.log_every_n_steps=10"]
COMMON_TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "data.batch_size=32", "data.val_batch_size=250",
               "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
SMALL = {"dino": ["model.out_dim=256", "model.head_hidden_dim=128", "model.bottleneck_dim=32", "dino.n_local=2"],
         "lejepa": ["model.proj_hidden_dim=128", "model.proj_dim=32", "lejepa.n_local=2", "lejepa.num_slices=256"]}
TINY = {"dino": ["model.out_dim=64", "model.head_hidden_dim=32", "model.bottleneck_dim=16", "dino.n_local=2"],
        "lejepa": ["model.proj_hidden_dim=32", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=64"]}
# Never data.subset here: MNIST-5k's training split is sorted by class (the first N images are all zeros);
# trainer.max_steps instead stops each trial after N shuffled batches.


def configure(recipe, quick: bool, steps: int, out: Path, extra: list[str]):
    """The recipe's defaults made small, trials capped at ``steps`` optimizer steps, trial folders under ``out``."""
    from sptrack.recipe.config import apply_overrides

    cfg = recipe.default_config()
    size = (COMMON_TINY + TINY.get(recipe.name, [])) if quick else (COMMON_SMALL + SMALL.get(recipe.name, []))
    apply_overrides(cfg, size + [f"trainer.max_steps={steps}", f"trainer.output_dir={out}"] + extra)
    cfg.tracker.kind = "none"
    return cfg


def run_study(recipe, cfg, name: str, pruner: str, args, storage: str) -> dict:
    """Run one study through ``run_sweep`` and return its trials in order (state, value, steps, params)."""
    import optuna

    from sptrack.tune.options import SweepOptions
    from sptrack.tune.study import run_sweep

    opts = SweepOptions(trials=args.trials, storage=storage, study=name, sampler=args.sampler, pruner=pruner,
                        prune_every=args.prune_every, prune_startup=args.prune_startup, sampler_seed=SEED)
    print(f"\n--- study {name}: {args.trials} trials, pruner {pruner}, sampler {args.sampler} (seed {SEED}), "
          f"{cfg.trainer.max_steps} steps per trial, report every {args.prune_every}", flush=True)
    started = time.perf_counter()
    rc = run_sweep(recipe, cfg, opts, argv=[])
    wall = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"run_sweep returned {rc} for study {name}")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "steps": int(t.user_attrs.get("last_step", 0)),
               "params": t.params, "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
              for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    return {"pruner": pruner, "wall_s": round(wall, 1), "trials": trials, **curve(trials)}


def curve(trials: list[dict]) -> dict:
    """Cumulative steps and best-so-far value after each trial (maximised objective; only COMPLETE trials have one)."""
    cumulative, best, points = 0, -math.inf, []
    for t in trials:
        cumulative += t["steps"]
        if t["state"] == "COMPLETE" and t["value"] is not None and math.isfinite(t["value"]):
            best = max(best, t["value"])
        points.append({"trial": t["number"], "steps": cumulative, "best": None if best == -math.inf else best})
    counts = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {"best": None if best == -math.inf else best, "total_steps": cumulative, "counts": counts, "curve": points}


def steps_to_reach(study: dict, target: Optional[float]) -> Optional[int]:
    """Cumulative steps at the first trial whose best-so-far is >= ``target`` (None if never)."""
    if target is None:
        return None
    return next((p["steps"] for p in study["curve"] if p["best"] is not None and p["best"] >= target), None)


def compare(unpruned: dict, pruned: dict) -> dict:
    """The headline numbers: steps pruning needed to reach the unpruned best, as fractions."""
    target = unpruned["best"]
    reach = steps_to_reach(pruned, target)
    own = steps_to_reach(unpruned, target)
    # Trials that completed in both studies: same params and seed, so the same value (a check that
    # pruning changed nothing but the steps).
    done = {t["number"]: t["value"] for t in unpruned["trials"] if t["state"] == "COMPLETE"}
    same = [abs(t["value"] - done[t["number"]]) for t in pruned["trials"] if t["state"] == "COMPLETE" and t["number"] in done]
    return {
        "target_value": target, "pruned_steps_to_reach": reach, "unpruned_steps_to_reach": own,
        "ratio_vs_unpruned_total": None if reach is None else reach / unpruned["total_steps"],
        "ratio_vs_unpruned_to_best": None if reach is None or not own else reach / own,
        "total_steps_ratio": pruned["total_steps"] / unpruned["total_steps"],
        "same_params": all(a["params"] == b["params"] for a, b in zip(unpruned["trials"], pruned["trials"])),
        "completed_in_both": len(same), "max_value_diff_completed_in_both": max(same) if same else None,
        "fate_of_best": fate_of_best(unpruned, pruned), "early_signal": early_signal(unpruned),
    }


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def early_signal(unpruned: dict) -> dict[str, float]:
    """Spearman rank correlation, over the unpruned trials, of the value reported at each step with the final value.

    The pruner can only keep the eventual best if early values rank trials like final ones do.
    """
    done = [t for t in unpruned["trials"] if t["state"] == "COMPLETE"]
    out = {}
    for step in sorted({s for t in done for s in t["intermediate"]}, key=int):
        rows = [(t["intermediate"][step], t["value"]) for t in done if step in t["intermediate"]]
        if len(rows) < 3:
            continue
        a, b = _ranks([r[0] for r in rows]), _ranks([r[1] for r in rows])
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
        out[step] = round(cov / var, 3) if var else float("nan")
    return out


def fate_of_best(unpruned: dict, pruned: dict) -> Optional[str]:
    """What the pruned study did with the unpruned study's best trial (same number, same parameters)."""
    if unpruned["best"] is None:
        return None
    best = next(t for t in unpruned["trials"] if t["state"] == "COMPLETE" and t["value"] == unpruned["best"])
    twin = next((t for t in pruned["trials"] if t["number"] == best["number"]), None)
    if twin is None or twin["state"] != "PRUNED":
        return None
    at = str(twin["steps"])
    path = ", ".join(f"{v:.3f}" for _, v in sorted(best["intermediate"].items(), key=lambda kv: int(kv[0])))
    return (f"The unpruned best, trial {best['number']}, was pruned at step {at} (value {twin['intermediate'].get(at, float('nan')):.3f}, "
            f"below the median of earlier trials at that step); unpruned, its reports were {path} (steps "
            f"{', '.join(sorted(best['intermediate'], key=int))}).")


def markdown(data: dict) -> str:
    """The RESULTS.md section."""
    u, p, c = data["studies"]["unpruned"], data["studies"]["pruned"], data["comparison"]
    mode = "quick (tiny model: pipeline check, not a result)" if data["quick"] else f"small {data['recipe']} on MNIST-5k"
    ratio = c["ratio_vs_unpruned_total"]
    lines = ["## Sweeps (fixed budget, with and without pruning)", "",
             f"{mode}: {data['trials']} trials per study of {data['steps_per_trial']} optimizer steps (batch {data['batch_size']}), "
             f"objective `{data['objective']}` (maximised), reported every {data['prune_every']} steps; sampler `{data['sampler']}` "
             f"with seed {SEED} in both studies{' (identical parameters trial by trial)' if c['same_params'] else ''}; median pruner "
             f"after {data['prune_startup']} trials; torch threads {data['threads']}. Steps = optimizer steps actually run "
             "(pruned trials count theirs). Curve: `sweeps.png`.", "",
             "| study | best | trials complete / pruned / failed | steps spent | steps to reach the unpruned best | wall time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, s, reach in (("no pruning", u, c["unpruned_steps_to_reach"]), ("median pruner", p, c["pruned_steps_to_reach"])):
        n = s["counts"]
        lines.append(f"| {label} | {_v(s['best'])} | {n['COMPLETE']} / {n['PRUNED']} / {n['FAIL']} | {s['total_steps']} | "
                     f"{'never' if reach is None else reach} | {s['wall_s'] / 60:.1f} min |")
    if ratio is None:
        headline = (f"Pruning **never reached** the unpruned best ({_v(c['target_value'])}) ❌ (target: within "
                    f"{100 * TARGET:.0f} % of the unpruned study's steps)")
    else:
        headline = (f"Pruning reached the unpruned best ({_v(c['target_value'])}) after **{100 * ratio:.0f} %** "
                    f"{'✅' if ratio <= TARGET else '❌'} of the steps the unpruned study spent (target ≤ {100 * TARGET:.0f} %)")
    lines += ["", headline
              + ("" if c["ratio_vs_unpruned_to_best"] is None else
                 f"; {100 * c['ratio_vs_unpruned_to_best']:.0f} % of the steps the unpruned study needed to first reach it")
              + f". The pruned study spent {100 * c['total_steps_ratio']:.0f} % of the unpruned study's steps in all."
              + ("" if c["max_value_diff_completed_in_both"] is None else
                 f" Trials completed in both studies ({c['completed_in_both']}) agree on their value to "
                 f"{c['max_value_diff_completed_in_both']:.1e}.")]
    if c.get("fate_of_best"):
        lines[-1] += " " + c["fate_of_best"]
    if c.get("early_signal"):
        lines[-1] += (" Rank correlation (Spearman, unpruned trials) of the value reported at step s with the final value: "
                      + ", ".join(f"s={k}: {v:+.2f}" for k, v in c["early_signal"].items()) + ".")
    return "\n".join(lines) + "\n"


def _v(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def plot(data: dict, path: Path) -> None:
    """Best-so-far objective vs cumulative training steps, both studies; pruned trials marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, colour in (("unpruned", "no pruning", "tab:gray"), ("pruned", "median pruner", "tab:blue")):
        s = data["studies"][key]
        xs = [0] + [pt["steps"] for pt in s["curve"]]
        ys = [None] + [pt["best"] for pt in s["curve"]]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.step(*zip(*pts), where="post", color=colour, label=f"{label} (best {s['best']:.3f}, {s['total_steps']} steps)")
        pruned = [(pt["steps"], pt["best"]) for pt, t in zip(s["curve"], s["trials"]) if t["state"] == "PRUNED" and pt["best"] is not None]
        if pruned:
            ax.plot(*zip(*pruned), "x", color=colour, ms=6, label=f"{label}: trial pruned")
    c = data["comparison"]
    if c["target_value"] is not None:
        ax.axhline(c["target_value"], color="tab:gray", ls=":", lw=1)
    if c["pruned_steps_to_reach"] is not None:
        ax.axvline(c["pruned_steps_to_reach"], color="tab:blue", ls="--", lw=1, label="pruning reaches the unpruned best")
    ax.set_xlabel("cumulative training steps (all trials)")
    ax.set_ylabel(f"best {data['objective']} so far")
    ax.set_title(f"{data['trials']}-trial study, {data['steps_per_trial']} steps per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    common.save_figure(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    parser.add_argument("--quick", action="store_true", help="6 tiny trials of 8 steps: a pipeline check")
    parser.add_argument("--recipe", default="lejepa", help="lejepa (default: its kNN accuracy separates learning rates within 50 steps) or dino")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 16; 6 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default 50; 8 with --quick)")
    parser.add_argument("--prune-every", type=int, default=None, help="report to the pruner every K steps (default 10; 2 with --quick)")
    parser.add_argument("--prune-startup", type=int, default=3, help="complete trials before the median pruner prunes")
    parser.add_argument("--sampler", default="random", help="random (default: same parameters in both studies), tpe or cmaes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: this model's matmuls are too small to gain from a second thread, "
                             "and a busy machine makes a second one much slower)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a recipe config override, repeatable")
    args = parser.parse_args(argv)
    args.trials = args.trials or (6 if args.quick else 16)
    args.steps = args.steps or (8 if args.quick else 50)
    args.prune_every = args.prune_every or (2 if args.quick else 10)
    threads = common.setup_threads(args.threads)
    common.quiet_lightning()
    import sptrack
    from sptrack.recipe.loading import load_recipe

    sptrack.Module._print_summary = lambda self: None  # one line per trial, not an optimizer table per trial

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sptrack-sweeps-"))
    os.chdir(work)
    recipe = load_recipe(args.recipe)
    cfg = configure(recipe, args.quick, args.steps, work, args.override)
    storage = f"sqlite:///{work / 'studies.db'}"
    print(f"sweeps benchmark: recipe {args.recipe}, torch threads {threads}, cpus {os.cpu_count()}, storage {storage}", flush=True)
    started = time.perf_counter()
    # A fresh copy of the config per study: run_sweep must not see the other study's changes.
    unpruned = run_study(recipe, configure(recipe, args.quick, args.steps, work, args.override), "unpruned", "none", args, storage)
    pruned = run_study(recipe, configure(recipe, args.quick, args.steps, work, args.override), "pruned", "median", args, storage)
    data = {"quick": args.quick, "recipe": args.recipe, "trials": args.trials, "steps_per_trial": args.steps, "batch_size": cfg.data.batch_size,
            "prune_every": args.prune_every, "prune_startup": args.prune_startup, "sampler": args.sampler, "sampler_seed": SEED,
            "objective": "eval/knn_acc", "threads": threads, "target": TARGET, "studies": {"unpruned": unpruned, "pruned": pruned},
            "comparison": compare(unpruned, pruned), "total_s": round(time.perf_counter() - started, 1), "plot": "sweeps.png"}
    data["markdown"] = markdown(data)
    plot(data, out / "sweeps.png")
    path = common.write_json("sweeps", data, out)
    print(f"\n{data['markdown']}\nwrote {path} and {out / 'sweeps.png'} ({data['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
