"""Learning curves: each recipe's held-out linear-probe and kNN accuracy vs wall time on MNIST-5k, over seeds.

    python bench/learning.py --out DIR [--quick] [--recipes dino,ijepa,lejepa] [--seeds 0,1,2] [--epochs-scale 0.5]
                             [--probe-every K] [--threads 2] [--override dino:trainer.max_epochs=6]

Each recipe in ``recipes/`` trains with its defaults (``trainer.max_epochs`` of each recipe's Config, currently
DINO 30, I-JEPA 16, LeJEPA 27; each times ``--epochs-scale``, rounded, at least 1; the learning-rate and EMA
schedules follow the shortened length) once per training seed of ``--seeds`` (default 0,1,2: no single-seed
headline), which sets ``trainer.seed`` (over any ``--override`` of it). The train/held-out split comes from
``data.split_seed``, apart from it, so every seed is scored on the same held-out images. The runs go one after
another in this process, with ``--threads`` torch threads (default 2 = the machine's cores; printed). The Trainer
gets the same arguments as ``python -m sptrack.run`` (``sptrack.recipe.trainer_args.trainer_kwargs``) but no
checkpoints and no progress bar.

At the end of every epoch (after the recipe's own validation) the wall time since ``fit`` began is
recorded with the online metrics ``eval/knn_acc``, ``eval/probe_acc``, ``eval/rankme``; before the
first step, every ``--probe-every`` epochs and after the last epoch the held-out linear probe on
frozen embeddings (``sptrack.recipe.evaluate.linear_probe_accuracy``, what ``sptrack.run`` reports at
the end) is fitted. Probe time is excluded from the wall clock and the global RNG state is restored
around it, so the training trajectory is the same whatever the probe schedule. The random-init
baseline is the mean of the same probe on ``cfg.eval.baseline_inits`` encoders from
``experiment.encoder_factory()`` (seeds 0, 1, ...), as in ``sptrack.recipe.final_eval.final_linear_eval``;
it does not depend on the training seed, so it is computed once per recipe (after its first successful run).

Writes ``DIR/learning.json`` and ``DIR/learning.png`` (one curve per recipe and seed). The JSON holds the
run settings (``seeds``, ``quick``, ``epochs_scale``, ``threads``, ...), a ``"markdown"`` table that
``bench/run.py`` copies into RESULTS.md (one row per recipe: mean ± sample std over the seeds, per-seed
values, random-init, gain), and ``recipes[name] = {"seeds": [...], "runs": {"<seed>": run}, "summary": {...}}``:
``run`` is one training run's record (``epochs``, ``steps``, ``wall_s``, ``linear_probe_acc``,
``random_init_linear_probe_acc``, ``gain_points``, final ``knn_acc`` / ``probe_acc`` / ``rankme``, ``curve``,
``linear_probe_curve``, ``config``) or ``{"error": ...}``; ``summary`` (``learning_report.summarize``) has
``seeds_ok``, ``seeds_failed``, per-seed ``linear_probe_acc`` and ``wall_s``, ``linear_probe_mean``,
``linear_probe_std`` (null with one seed), ``wall_s_mean``, ``random_init`` (mean, std, min, max over the
inits), ``random_init_linear_probe_acc``, ``gain_points_mean``, ``gain_points_min``, ``knn_acc_mean``,
``probe_acc_mean``, ``rankme_mean``. A failed run is recorded and the others go on; the exit status is 1
if any failed.

Expected time alone on 2 CPU cores: the sum over recipes of seeds × epochs × ``SECONDS_PER_EPOCH``, printed at
the start (plus the probes, about a minute per seed). With other CPU-heavy jobs on the machine, 2 torch threads
can be several times slower than 1 (measured here: 7x on a load of 3-6); the load is printed and stored, and
``--threads 1`` is the fallback. ``--quick``: tiny models, 8 batches of 32 per epoch, 2 epochs, and only seed 0
unless ``--seeds`` is given (under a minute; each extra seed adds about as much again): it proves the pipeline only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import learning_report  # noqa: E402

common.add_repo_to_path()

RECIPES = ("dino", "ijepa", "lejepa")
#: Seconds per epoch alone on 2 cores with 2 threads (defaults, online evaluation included), for the estimate printed
#: at the start, from the default commands measured on 2026-12-02 (this machine's speed varied by ~25 % that day):
#: DINO 25 epochs in 289 s, LeJEPA 25 in 649 s; I-JEPA 16 in 365-370 s (2026-12-04, its multi-crop default).
SECONDS_PER_EPOCH = {"dino": 11.6, "ijepa": 23.0, "lejepa": 12.0}
ONLINE = ("eval/knn_acc", "eval/probe_acc", "eval/rankme")
# Tiny models for --quick: only the pipeline is under test, not the numbers.
QUICK_OVERRIDES = {
    # Not data.subset: MNIST-5k's training split is sorted by class, so its first N images are all zeros.
    "common": ["data.batch_size=32", "data.val_batch_size=250", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
               "model.embed_dim=32", "model.depth=1", "model.num_heads=2"],
    "dino": ["model.cnn_widths=(8, 16)", "model.out_dim=64", "model.head_hidden_dim=64", "model.bottleneck_dim=16", "dino.n_local=2"],
    "ijepa": ["model.predictor_dim=32", "model.predictor_depth=1", "model.predictor_heads=2"],
    "lejepa": ["model.proj_hidden_dim=64", "model.proj_dim=16", "lejepa.n_local=2", "lejepa.num_slices=128"],
}
QUICK_BATCHES = 8  # training batches per epoch in --quick (shuffled over all 4,000 images)
SEEDS, QUICK_SEEDS = "0,1,2", "0"  # --seeds defaults: the reporting rule's seeds 0-2; one in --quick (a pipeline check)


def _probe(experiment: Any, encoder: Any = None) -> float:
    """Held-out linear-probe accuracy of ``encoder`` (default: the recipe's trained encoder), RNG untouched."""
    import torch

    from sptrack.recipe.evaluate import linear_probe_accuracy

    # Iterating a DataLoader draws a seed from the global generator: fork it, so that probing does
    # not change the augmentations (and so the curve) of the epochs that follow.
    with torch.random.fork_rng(devices=[]):
        return linear_probe_accuracy(experiment.encoder if encoder is None else encoder, experiment.embed,
                                     experiment.probe_train_loader, experiment.val_loader)


def make_recorder(experiment: Any, probe_every: int, log=print):
    """A Lightning callback recording the per-epoch curve; probe time is kept off the wall clock."""
    import lightning.pytorch as pl

    class Recorder(pl.Callback):
        def __init__(self):
            self.start = time.perf_counter()
            self.paused = 0.0  # seconds spent in linear probes
            self.epochs: list[dict] = []
            self.probes: list[dict] = []

        def elapsed(self) -> float:
            """Training wall time since ``fit`` began, probes excluded."""
            return time.perf_counter() - self.start - self.paused

        def probe(self, epoch: int, step: int) -> None:
            wall = self.elapsed()
            t0 = time.perf_counter()
            acc = _probe(experiment)
            seconds = time.perf_counter() - t0
            self.paused += seconds
            self.probes.append({"epoch": epoch, "step": step, "wall_s": round(wall, 2), "linear_probe_acc": acc, "probe_s": round(seconds, 2)})
            log(f"    linear probe after epoch {epoch}: {acc:.4f} (at {wall:.1f} s; probe took {seconds:.1f} s, not counted)")

        def on_train_start(self, trainer, pl_module):
            self.probe(0, 0)  # the initial encoder: where the curve starts

        def on_train_epoch_end(self, trainer, pl_module):
            # Lightning validates before this hook, so the online eval/... metrics are this epoch's.
            epoch = trainer.current_epoch + 1
            row = {"epoch": epoch, "step": int(trainer.global_step), "wall_s": round(self.elapsed(), 2)}
            for name in (*ONLINE, "train/loss"):
                value = trainer.callback_metrics.get(name)
                row[name] = float(value) if value is not None and value.numel() == 1 else None
            self.epochs.append(row)
            log(f"  epoch {epoch:3d}  {row['wall_s']:7.1f} s  step {row['step']:5d}  loss {_f(row['train/loss'])}  kNN {_f(row['eval/knn_acc'])}  "
                f"online probe {_f(row['eval/probe_acc'])}  RankMe {_f(row['eval/rankme'], 2)}")
            last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
            if last or epoch % probe_every == 0:
                self.probe(epoch, int(trainer.global_step))

    return Recorder()


def _f(value: Optional[float], digits: int = 4) -> str:
    return "  n/a " if value is None else f"{value:.{digits}f}"


def configure(name: str, recipe: Any, quick: bool, epochs_scale: float, overrides: list[str]) -> Any:
    """The recipe's default config, shortened by ``epochs_scale`` (or tiny in quick mode), then ``overrides``."""
    from sptrack.recipe.config import apply_overrides

    cfg = recipe.default_config()
    cfg.trainer.max_epochs = max(1, round(cfg.trainer.max_epochs * epochs_scale))
    if quick:
        apply_overrides(cfg, QUICK_OVERRIDES["common"] + QUICK_OVERRIDES[name])
        cfg.trainer.limit_train_batches = QUICK_BATCHES  # an int (a batch count): overrides would coerce it to a float fraction
    apply_overrides(cfg, overrides)
    cfg.tracker.kind = "none"
    return cfg


def run_seed(name: str, cfg: Any, probe_every: Optional[int], work: Path, baseline: Optional[dict] = None) -> tuple[dict, dict]:
    """Train one recipe at ``cfg.trainer.seed`` with the curve recorder; return its record and the random-init baseline.

    The baseline (mean, std, min, max over ``cfg.eval.baseline_inits`` inits) is computed only when ``baseline`` is None.
    """
    import lightning.pytorch as pl
    import torch

    from sptrack.module.trainer import Trainer
    from sptrack.recipe.config import flatten
    from sptrack.recipe.evaluate import random_init_baseline
    from sptrack.recipe.loading import load_recipe
    from sptrack.recipe.trainer_args import trainer_kwargs

    recipe = load_recipe(name)
    epochs, seed = cfg.trainer.max_epochs, cfg.trainer.seed
    every = probe_every or math.ceil(epochs / 4)  # about four probes along the curve, plus the start and the end
    pl.seed_everything(seed, workers=True, verbose=False)
    experiment = recipe.build(cfg)
    experiment.module._print_summary = lambda: None  # keep the output to the curve
    recorder = make_recorder(experiment, every)
    kwargs = {**trainer_kwargs(cfg), "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = Trainer(**kwargs, callbacks=[*experiment.callbacks, recorder], logger=False, default_root_dir=str(work / name / str(seed)))
    limit = cfg.trainer.limit_train_batches
    batches = len(experiment.train_loader) if limit is None else (limit if isinstance(limit, int) else int(limit * len(experiment.train_loader)))
    print(f"\n--- {name} seed {seed}: {epochs} epochs, batch {cfg.data.batch_size}, {batches} steps/epoch, "
          f"linear probe every {every} epochs; torch threads {torch.get_num_threads()}", flush=True)
    recorder.start = time.perf_counter()
    trainer.fit(experiment.module, experiment.train_loader, experiment.val_loader)
    wall = recorder.elapsed()
    baseline_s = 0.0
    if baseline is None:
        t0 = time.perf_counter()
        # As final_linear_eval: over cfg.eval.baseline_inits random inits (seeds 0, 1, ...), RNG untouched.
        baseline = random_init_baseline(experiment.encoder_factory, experiment.embed, experiment.probe_train_loader, experiment.val_loader,
                                        cfg.eval.baseline_inits)
        baseline_s = time.perf_counter() - t0
        baseline = {**baseline, "probe_s": round(baseline_s, 2), "computed_in_seed": seed}
    final = recorder.epochs[-1] if recorder.epochs else {}
    probe = recorder.probes[-1]["linear_probe_acc"]
    print(f"--- {name} seed {seed}: {wall:.1f} s of training; linear probe {probe:.4f} vs random-init {baseline['mean']:.4f} "
          f"({100 * (probe - baseline['mean']):+.1f} points); kNN {_f(final.get('eval/knn_acc'))}", flush=True)
    keep = ("data.dataset", "data.batch_size", "data.subset", "data.split_seed", "trainer.max_epochs", "trainer.seed")
    return {
        "config": {k: v for k, v in flatten(cfg).items() if k in keep or k.startswith("model.")},
        "epochs": epochs, "steps": int(trainer.global_step), "wall_s": round(wall, 2),
        "probe_s": round(recorder.paused + baseline_s, 2),
        "linear_probe_acc": probe, "random_init_linear_probe_acc": baseline["mean"], "gain_points": round(100 * (probe - baseline["mean"]), 2),
        **{k.split("/")[1]: final.get(k) for k in ONLINE},
        "curve": recorder.epochs, "linear_probe_curve": recorder.probes,
    }, baseline


def run_recipe(name: str, cfg: Any, seeds: list[int], probe_every: Optional[int], work: Path) -> dict:
    """Train ``name`` once per seed (``cfg.trainer.seed``); a failed seed is recorded and the others still run."""
    runs: dict[str, dict] = {}
    baseline = None
    for seed in seeds:
        cfg.trainer.seed = seed
        try:
            runs[str(seed)], baseline = run_seed(name, cfg, probe_every, work, baseline)
        except Exception as err:  # noqa: BLE001 - one failing run must not hide the others' curves
            import traceback

            traceback.print_exc()
            runs[str(seed)] = {"error": f"{type(err).__name__}: {err}"}
    return {"seeds": seeds, "runs": runs, "summary": learning_report.summarize(seeds, runs, baseline)}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    parser.add_argument("--quick", action="store_true", help="tiny models, 8 batches per epoch, 2 epochs: a pipeline check")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", type=_seeds, default=None, metavar="0,1,2",
                        help=f"training seeds (trainer.seed), comma-separated; one run per recipe and seed (default {SEEDS}; {QUICK_SEEDS} with --quick)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply each recipe's default max_epochs (at least 1 epoch)")
    parser.add_argument("--probe-every", type=int, default=None, help="linear probe every K epochs (default: ceil(epochs / 4))")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --quick)")
    parser.add_argument("--override", action="append", default=[], metavar="RECIPE:KEY=VALUE",
                        help="a config override for one recipe (or 'all:KEY=VALUE'), repeatable")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    threads = common.setup_threads(args.threads or (1 if args.quick else 2))
    common.quiet_lightning()
    import os
    import tempfile

    from sptrack.recipe.loading import load_recipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sptrack-learning-"))
    os.chdir(work)  # recipes write relative run directories (runs/...): keep them out of the checkout
    configs = {}
    for name in names:
        own = [o.split(":", 1)[1] for o in args.override if o.split(":", 1)[0] in (name, "all")]
        configs[name] = configure(name, load_recipe(name), args.quick, args.epochs_scale, own)
    load = os.getloadavg()[0]
    if threads > 1 and load > 1.0:
        print(f"warning: 1-minute load {load:.1f} before starting: other jobs share the cores, and {threads} torch threads "
              "may then run several times slower than 1 (--threads 1)", flush=True)
    seeds = args.seeds or _seeds(QUICK_SEEDS if args.quick else SEEDS)
    # seeds x epochs x SECONDS_PER_EPOCH per recipe (probes not included)
    parts = {n: len(seeds) * configs[n].trainer.max_epochs * SECONDS_PER_EPOCH.get(n, 10.0) for n in names}
    terms = ", ".join(f"{n} {len(seeds)} x {configs[n].trainer.max_epochs} x {SECONDS_PER_EPOCH.get(n, 10.0):g} s" for n in names)
    print(f"learning benchmark: recipes {', '.join(names)}; seeds {', '.join(map(str, seeds))}; torch threads {threads}; "
          f"cpus {os.cpu_count()}; {'quick' if args.quick else f'epochs x {args.epochs_scale:g}'}"
          + ("" if args.quick else f"; expected ~{sum(parts.values()) / 60:.1f} min of training alone on 2 cores "
             f"(seeds x epochs x SECONDS_PER_EPOCH: {terms}) plus the probes"), flush=True)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for name in names:
        results[name] = run_recipe(name, configs[name], seeds, args.probe_every, work)
    meta = {"quick": args.quick, "quick_batches": QUICK_BATCHES, "epochs_scale": args.epochs_scale, "seeds": seeds, "threads": threads,
            "estimate_s": None if args.quick else round(sum(parts.values()), 1), "total_s": round(time.perf_counter() - started, 1)}
    learning_report.plot(results, out / "learning.png")
    table = learning_report.markdown(results, meta)
    path = common.write_json("learning", {**meta, "recipes": results, "plot": "learning.png", "markdown": table}, out)
    print(f"\n{table}\nwrote {path} and {out / 'learning.png'} ({meta['total_s'] / 60:.1f} min)")
    failed = [f"{n} seed {s}" for n, r in results.items() for s in r["summary"]["seeds_failed"]]
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
