"""Summaries, the markdown table and the plot of ``bench/learning.py`` (no training here).

``summarize(seeds, runs, baseline)`` turns one recipe's per-seed runs into its ``"summary"``,
``markdown(recipes, meta)`` renders the RESULTS.md section from ``learning.json``'s ``"recipes"``, and
``plot(recipes, path)`` draws the curves of every (recipe, seed) run.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

import common  # bench/common.py: bench/ is on sys.path, as for every bench script

COLOURS = {"dino": "tab:blue", "ijepa": "tab:orange", "lejepa": "tab:green"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # seed index 0, 1, 2, ...: one marker each


def _mean(values: list) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _stdev(values: list) -> Optional[float]:
    """Sample standard deviation; None with fewer than two values (printed "n/a")."""
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(seeds: list[int], runs: dict[str, dict], baseline: Optional[dict]) -> dict:
    """One recipe's summary over its successful seed runs (failed seeds listed, not averaged).

    ``runs`` and the per-seed dicts of the summary are keyed by ``str(seed)``, as JSON writes them.
    """
    ok = [s for s in seeds if "error" not in runs.get(str(s), {"error": "not run"})]
    summary: dict[str, Any] = {"seeds_ok": ok, "seeds_failed": [s for s in seeds if s not in ok]}
    if baseline is not None:
        summary["random_init"] = baseline  # mean, std, min, max over the inits, computed once
        summary["random_init_linear_probe_acc"] = baseline["mean"]
    if not ok:
        return summary
    done = [runs[str(s)] for s in ok]
    accs = [r["linear_probe_acc"] for r in done]
    walls = [r["wall_s"] for r in done]
    keys = [str(s) for s in ok]
    summary.update({
        "epochs": done[0]["epochs"], "steps": done[0]["steps"],
        "linear_probe_acc": dict(zip(keys, accs)), "linear_probe_mean": statistics.fmean(accs), "linear_probe_std": _stdev(accs),
        "wall_s": dict(zip(keys, walls)), "wall_s_mean": round(statistics.fmean(walls), 2),
        **{f"{k}_mean": _mean([r[k] for r in done]) for k in ("knn_acc", "probe_acc", "rankme")},
    })
    if baseline is not None:
        gains = [100 * (a - baseline["mean"]) for a in accs]
        summary.update({"gain_points_mean": round(statistics.fmean(gains), 2), "gain_points_min": round(min(gains), 2)})
    return summary


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _md(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(recipes: dict, meta: dict) -> str:
    """The RESULTS.md section: one row per recipe, statistics over its seeds."""
    mode = (f"quick (tiny models, {meta['quick_batches']} batches of 32 per epoch: pipeline check, not a result)" if meta["quick"]
            else f"recipe defaults, epochs × {meta['epochs_scale']:g}")
    seeds = ", ".join(str(s) for s in meta["seeds"])
    lines = ["## Learning (held-out accuracy vs wall time, MNIST-5k)", "",
             f"{mode}; training seeds {seeds} (`trainer.seed`; the train/held-out split is `data.split_seed`, the same for all); "
             f"torch threads {meta['threads']}, runs one after another. Linear probe = L-BFGS logistic regression "
             "on frozen embeddings of the 4,000 training images, scored on the 1,000 held-out ones, after the last epoch: "
             "mean ± sample std over the seeds (n/a with one seed), and each seed's value in seed order; "
             "wall time = mean training time per seed, including the recipe's online evaluation, excluding these probes; "
             "kNN / RankMe = means over the seeds of the recipe's online evaluation on the held-out split after the last epoch; "
             "random-init = the same linear probe on untrained encoders of the same architecture, the mean over `eval.baseline_inits` inits "
             "(seeds 0, 1, ...; 5 by default; independent of the training seed, so computed once per recipe), as in the end-of-run report; "
             "gain = trained minus random-init probe in points, mean and minimum over the seeds. "
             "Curves (one per seed): `learning.png`, `learning.json`.", "",
             "| recipe | seeds | epochs | wall time (mean) | linear probe mean ± std | per seed | random-init probe | gain (mean, min) "
             "| kNN | RankMe |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, r in recipes.items():
        s = r["summary"]
        failed = s["seeds_failed"]
        note = f" ({', '.join(str(x) for x in failed)} failed: {_first_error(r, failed)[:80]})" if failed else ""
        if not s["seeds_ok"]:
            lines.append(f"| {name} | none{note} | | | | | | | | |")
            continue
        ok = ", ".join(str(x) for x in s["seeds_ok"])
        per_seed = ", ".join(f"{a:.3f}" for a in s["linear_probe_acc"].values())
        gain = "n/a" if "gain_points_mean" not in s else f"{s['gain_points_mean']:+.1f}, {s['gain_points_min']:+.1f} pts"
        lines.append(f"| {name} | {ok}{note} | {s['epochs']} | {_duration(s['wall_s_mean'])} | "
                     f"{s['linear_probe_mean']:.3f} ± {_md(s['linear_probe_std'])} | {per_seed} | "
                     f"{_md(s.get('random_init_linear_probe_acc'))} | {gain} | {_md(s['knn_acc_mean'])} | {_md(s['rankme_mean'], 1)} |")
    return "\n".join(lines) + "\n"


def _first_error(recipe: dict, failed: list) -> str:
    error = next((recipe["runs"][str(s)]["error"] for s in failed if "error" in recipe["runs"].get(str(s), {})), "not run")
    return " ".join(error.split()).replace("|", "/")  # one table cell


def plot(recipes: dict, path: Path) -> None:
    """Linear probe and kNN accuracy vs wall time: one line per (recipe, seed) in the recipe's colour, the first seed
    bold and the others thinner and lighter with their own marker; each recipe's random-init probe dashed once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_probe, ax_knn) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, r in recipes.items():
        colour = COLOURS.get(name)
        for i, seed in enumerate(r["seeds"]):
            run = r["runs"].get(str(seed), {"error": "not run"})
            if "error" in run:
                continue
            style = {"color": colour, "marker": MARKERS[i % len(MARKERS)], "lw": 1.8 if i == 0 else 0.9, "alpha": 1.0 if i == 0 else 0.55}
            pts = run["linear_probe_curve"]
            ax_probe.plot([p["wall_s"] / 60 for p in pts], [p["linear_probe_acc"] for p in pts], label=f"{name} seed {seed}", **style)
            knn = [(e["wall_s"] / 60, e["eval/knn_acc"]) for e in run["curve"] if e["eval/knn_acc"] is not None]
            if knn:
                ax_knn.plot(*zip(*knn), label=f"{name} seed {seed}", ms=3, **style)
        baseline = r["summary"].get("random_init_linear_probe_acc")
        if baseline is not None:
            ax_probe.axhline(baseline, color=colour, ls="--", lw=1, label=f"{name} random-init")
    for ax, title in ((ax_probe, "linear probe on frozen embeddings (held-out)"), (ax_knn, "online kNN, k=20 (held-out)")):
        ax.set_title(title)
        ax.set_xlabel("training wall time (min)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_probe.set_ylabel("accuracy")
    common.save_figure(fig, path)

