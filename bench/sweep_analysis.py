"""What the sweeps benchmark computes from recorded trials: early-signal correlations and exact pruning replays.

A trial's curve is deterministic given its parameters (seeded data order, augmentations and init), and
the random sampler draws the same parameters whatever earlier trials did. So the pruned study of a
random-sampler repeat is the unpruned one with each trial cut where the pruner would have stopped it:
:func:`replay` feeds the recorded reports to a real Optuna pruner, trial by trial, and gives the study it
would have produced. ``bench/sweeps.py`` checks one replay against a real pruned study.
"""

from __future__ import annotations

import math
from typing import Optional

#: Objective margin of "the pruned study found the same": 0.5 accuracy points.
MARGIN = 0.005


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def signal_value(trial: dict, signal: str, step: int) -> Optional[float]:
    """``signal`` at report ``step``; ``<metric>:slope`` is the change since the previous report."""
    steps = sorted(int(s) for s in trial["signals"])
    name, _, kind = signal.partition(":")
    value = trial["signals"].get(str(step), {}).get(name)
    if value is None or not kind:
        return value
    earlier = [s for s in steps if s < step]
    if not earlier:
        return None
    before = trial["signals"][str(earlier[-1])].get(name)
    return None if before is None else value - before


def correlation_table(trials: list[dict], signals: list[str], steps: list[int]) -> dict[str, dict[str, float]]:
    """``{signal: {step: rho}}``: rank correlation over complete trials of the signal at ``step`` with the final objective.

    A loss is better when lower, so its correlation with an accuracy is expected negative; the
    table gives the raw sign.
    """
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    table: dict[str, dict[str, float]] = {}
    for signal in signals:
        row = {}
        for step in steps:
            pairs = [(signal_value(t, signal, step), t["value"]) for t in done]
            pairs = [(x, y) for x, y in pairs if x is not None and math.isfinite(x)]
            row[str(step)] = round(spearman([p[0] for p in pairs], [p[1] for p in pairs]), 3) if len(pairs) >= 5 else float("nan")
        table[signal] = row
    return table


def replay(trials: list[dict], pruner: str, metric: str, every: int, startup: int, warmup: float, total_steps: int,
           study_name: str) -> dict:
    """The study ``pruner`` (reporting ``metric``, no prune before ``warmup`` of the steps) would have made of ``trials``.

    ``study_name`` is that of the pruned study: Hyperband puts trials in brackets by a hash of it.

    Mirrors :class:`sptrack.tune.pruning.TrialMonitor`: each report goes to the trial; a prune is asked
    for from the warm-up on, never at the final report (the trial has finished then).
    """
    import optuna

    from sptrack.tune.study import make_pruner  # the pruners --pruner builds

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, direction="maximize", pruner=make_pruner(pruner, every, startup),
                                sampler=optuna.samplers.RandomSampler(0))
    out = []
    for t in trials:
        trial = study.ask()
        stopped = None
        for step in sorted(int(s) for s in t["signals"]):
            value = t["signals"][str(step)].get(metric)
            if value is None:
                continue
            trial.report(value, step)
            if step < total_steps and step >= warmup * total_steps and trial.should_prune():
                stopped = step
                break
        if stopped is None and t["state"] != "COMPLETE":  # failed (e.g. a non-finite loss) after the same steps
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            out.append({"number": t["number"], "state": "FAIL", "value": None, "steps": t["steps"]})
        elif stopped is None:
            study.tell(trial, t["value"])
            out.append({"number": t["number"], "state": "COMPLETE", "value": t["value"], "steps": total_steps})
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            out.append({"number": t["number"], "state": "PRUNED", "value": None, "steps": stopped})
    return summarize(out)


def summarize(trials: list[dict]) -> dict:
    """Best value, total steps and the best-so-far curve over cumulative steps, in trial order."""
    cumulative, best, curve = 0, -math.inf, []
    for t in trials:
        cumulative += t["steps"]
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, t["value"])
        curve.append((cumulative, None if best == -math.inf else best))
    states = [t["state"] for t in trials]
    return {"best": None if best == -math.inf else best, "total_steps": cumulative, "curve": curve, "trials": trials,
            "pruned": states.count("PRUNED"), "complete": states.count("COMPLETE")}


def verdict(unpruned: dict, pruned: dict) -> dict:
    """Whether the pruned study ended within :data:`MARGIN` of the unpruned best, and its share of the steps."""
    found = pruned["best"] is not None and unpruned["best"] is not None and pruned["best"] >= unpruned["best"] - MARGIN
    return {"within": bool(found), "gap": None if pruned["best"] is None else unpruned["best"] - pruned["best"],
            "steps_ratio": pruned["total_steps"] / unpruned["total_steps"]}


def score(verdicts: list[dict]) -> dict:
    """Over repeats: the share within the margin and the ratio of all steps spent."""
    n = len(verdicts)
    return {"repeats": n, "within": sum(v["within"] for v in verdicts), "within_share": sum(v["within"] for v in verdicts) / n,
            "mean_steps_ratio": sum(v["steps_ratio"] for v in verdicts) / n}


def choose(candidates: dict[str, dict], goal_share: float, goal_ratio: float) -> str:
    """The candidate meeting both goals with the fewest steps; else the highest share, then fewest steps."""
    meeting = [k for k, c in candidates.items() if c["within_share"] >= goal_share and c["mean_steps_ratio"] <= goal_ratio]
    if meeting:
        return min(meeting, key=lambda k: candidates[k]["mean_steps_ratio"])
    return max(candidates, key=lambda k: (candidates[k]["within_share"], -candidates[k]["mean_steps_ratio"]))
