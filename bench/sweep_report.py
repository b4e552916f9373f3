"""The sweeps benchmark's RESULTS.md section and figure (from the data ``bench/sweeps.py`` collects)."""

from __future__ import annotations

import math
from pathlib import Path

import common
import sweep_analysis as analysis


def _rho(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.2f}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _repeats(verdicts: list[dict]) -> str:
    """Per repeat: met or not, the gap below the unpruned best, the share of its steps."""
    return ", ".join(f"{'✅' if v['within'] else '❌'} gap {100 * v['gap']:+.1f} pts / {_pct(v['steps_ratio'])}" if v["gap"] is not None
                     else "❌ nothing completed" for v in verdicts)


def markdown(data: dict) -> str:
    """Correlation table, the replayed candidates (best per pruner), the chosen default, TPE repeats."""
    steps, every = data["steps"], data["report_every"]
    mode = "quick (tiny model: a pipeline check, not a result)" if data["quick"] else "small LeJEPA on MNIST-5k"
    lines = ["## Sweeps: early signals and pruning over repeated studies", "",
             f"{mode}: {data['repeats']} repeats (sampler seeds) of {data['trials']} trials × {steps} optimizer steps, "
             f"evaluated every {every} steps on the validation images (10 % of the training split; the held-out split is not "
             f"used), objective the final validation kNN accuracy. Pruners ask after {data['startup']} complete trials. "
             f"{data['total_s'] / 60:.0f} min in all.", "",
             "**What predicts the end** (Spearman rank correlation over all "
             f"{sum(len(s['trials']) for s in data['studies'] if s['sampler'] == 'random' and s['pruner'] == 'none')} random-sampler "
             "trials of the signal at a step with the final objective; a loss should correlate negatively):", ""]
    cols = list(next(iter(data["correlations"].values())))
    lines += ["| signal | " + " | ".join(f"step {c} ({100 * int(c) / steps:.0f} %)" for c in cols) + " |",
              "| --- |" + " ---: |" * len(cols)]
    for signal, row in data["correlations"].items():
        lines.append(f"| `{signal}` | " + " | ".join(_rho(row[c]) for c in cols) + " |")
    lines += ["", f"**Pruners replayed** on the {data['repeats']} random-sampler repeats (exact: same parameters and curves; "
              "goal: within 0.5 points of the unpruned best in ≥ 80 % of repeats with ≤ 50 % of the steps). Best warm-up per "
              "pruner and metric:", "",
              "| pruner | prune metric | warm-up | repeats within 0.5 pts | steps vs unpruned |", "| --- | --- | ---: | ---: | ---: |"]
    best: dict = {}
    for key, c in data["candidates"].items():
        group = (c["pruner"], c["metric"])
        rank = (c["within_share"], -c["mean_steps_ratio"])
        if group not in best or rank > best[group][0]:
            best[group] = (rank, key, c)
    for _, key, c in sorted(best.values(), key=lambda b: b[0], reverse=True):
        mark = " **(chosen)**" if key == data["chosen"] else ""
        lines.append(f"| {c['pruner']}{mark} | `{c['metric']}` | {_pct(c['warmup'])} | {c['within']}/{c['repeats']} | "
                     f"{_pct(c['mean_steps_ratio'])} |")
    pick, check = data["random_chosen"], data["replay_check"]
    per, tpe, tper = _repeats(pick["per_repeat"]), data["tpe"], _repeats(data["tpe_per_repeat"])

    def met(s: dict) -> str:
        return "✅" if s["within_share"] >= data["goal"]["share"] and s["mean_steps_ratio"] <= data["goal"]["steps_ratio"] else "❌"

    lines += ["", f"**Chosen**: `{data['chosen']}`. Random sampler, per repeat (gap below the unpruned best, share of its "
              f"steps): {per}; in all {pick['within']}/{pick['repeats']} within 0.5 points with {_pct(pick['mean_steps_ratio'])} "
              f"of the steps {met(pick)}. Replay check against a real pruned study (seed 0): states "
              f"{'identical' if check['same_states'] else 'DIFFER'}, steps {'identical' if check['same_steps'] else 'DIFFER'}, "
              f"best {check['real_best']:.4f} real vs {check['replayed_best']:.4f} replayed.", "",
              f"**TPE**, run for real (pruned vs unpruned, same seed): {tper}; in all {tpe['within']}/{tpe['repeats']} within "
              f"0.5 points with {_pct(tpe['mean_steps_ratio'])} of the steps {met(tpe)}. Curves: `sweeps.png`." + tpe_caveat(data["trials"])]
    return "\n".join(lines) + "\n"


def tpe_caveat(trials: int) -> str:
    """What TPE repeats of ``trials`` trials can show: Optuna's TPE samples its first 10 trials at random."""
    if trials > 20:
        return ""
    return (f" Optuna's TPE draws its first 10 trials at random (`n_startup_trials`), so with {trials} trials a TPE study "
            f"differs from a random one in its last {max(0, trials - 10)} only: these repeats check pruning beside TPE, not yet "
            "how TPE learns from pruned trials, which takes studies several times longer.")


def plot(data: dict, path: Path) -> None:
    """Best-so-far validation objective vs cumulative steps, per repeat: unpruned grey, pruned blue; random and TPE panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = data["random_chosen"]
    studies = {s["name"]: s for s in data["studies"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, sampler in zip(axes, ("random", "tpe")):
        for r in range(data["repeats"]):
            unpruned = analysis.summarize(studies[f"{sampler}-{r}"]["trials"])
            if sampler == "random":
                pruned = analysis.replay(studies[f"random-{r}"]["trials"], pick["pruner"], pick["metric"], data["report_every"],
                                         data["startup"], pick["warmup"], data["steps"], f"random-pruned-{r}")
            else:
                pruned = analysis.summarize(studies[f"tpe-pruned-{r}"]["trials"])
            for summary, colour in ((unpruned, "tab:gray"), (pruned, "tab:blue")):
                pts = [(0, None)] + summary["curve"]
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    ax.step(*zip(*pts), where="post", color=colour, alpha=0.7, lw=1.2,
                            label=("no pruning" if colour == "tab:gray" else "pruned") if r == 0 else None)
        ax.set_title(f"{sampler} sampler ({data['repeats']} repeats)" + (" — pruned studies replayed" if sampler == "random" else ""))
        ax.set_xlabel("cumulative optimizer steps (all trials)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("best validation kNN accuracy so far")
    common.save_figure(fig, path)
