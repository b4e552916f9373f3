"""``python -m sptrack.run RECIPE [key=value ...] [options]``: train a recipe.

Only light modules are imported until training starts, so ``--help`` and errors come back fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from sptrack.errors import ConfigError, suggestion
from sptrack.run.config import RecipeConfig, apply_overrides, flatten
from sptrack.run.launch import resolve_devices
from sptrack.run.recipe import Recipe, load_recipe, recipes_dir

TRACKERS = ("none", "mlflow", "wandb")
STRATEGIES = ("auto", "ddp", "fsdp2")

USAGE = "python -m sptrack.run RECIPE [key=value ...] [options]"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options (overrides are the ``key=value`` positional arguments)."""
    parser = argparse.ArgumentParser(prog="python -m sptrack.run", usage=USAGE, add_help=False)
    parser.add_argument("recipe", nargs="?", help="recipe file (recipes/dino.py) or name (dino)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.backbone.lr=1e-3")
    parser.add_argument("-h", "--help", action="store_true", help="show options, or a recipe's keys")
    parser.add_argument("--devices", type=int, help="processes/devices per node")
    parser.add_argument("--strategy", choices=STRATEGIES, help="distributed strategy")
    parser.add_argument("--accelerator", help="cpu, gpu, auto ...")
    parser.add_argument("--max-epochs", type=int, help="shortcut for trainer.max_epochs")
    parser.add_argument("--seed", type=int, help="shortcut for trainer.seed")
    parser.add_argument("--tracker", choices=TRACKERS, help="experiment tracker (default: the recipe's)")
    parser.add_argument("--resume", metavar="CKPT", help="continue exactly from a checkpoint, or 'auto': the newest of the recipe's runs")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and optimizers, do not train")
    _add_sweep_arguments(parser)
    return parser


#: Sweep options (``--sweep``): flag -> (SweepOptions field, type, help). Parsed here, checked by
#: sptrack.tune.options (imported only when --sweep is given, so --help never loads optuna).
SWEEP_FLAGS = {
    "--trials": ("trials", int, "total trials of the study (all workers and re-runs together)"),
    "--storage": ("storage", str, "sqlite:///PATH.db (default <output_dir>/<recipe>/optuna.db), journal:PATH.log, or a database URL"),
    "--study": ("study", str, "study name (default <recipe>-sweep); re-running resumes it"),
    "--workers": ("workers", int, "worker processes on the study (K separate commands work too)"),
    "--sampler": ("sampler", str, "tpe (default), cmaes or random"),
    "--pruner": ("pruner", str, "median (default), hyperband or none"),
    "--objective": ("objective", str, "metric to optimise (default eval/knn_acc)"),
    "--direction": ("direction", str, "max (default) or min"),
    "--prune-every": ("prune_every", int, "report to the pruner every K optimizer steps (default 50)"),
    "--prune-metric": ("prune_metric", str, "metric reported to the pruner (default: the objective)"),
    "--prune-startup": ("prune_startup", int, "trials before the median pruner prunes (default 3)"),
    "--heartbeat": ("heartbeat_s", int, "heartbeat seconds; silent trials are retried after twice that (default 60)"),
}


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sweeps (Optuna)")
    group.add_argument("--sweep", action="store_true", help="run an Optuna study over the recipe's search_space")
    for flag, (dest, kind, text) in SWEEP_FLAGS.items():
        group.add_argument(flag, dest=f"sweep_{dest}", type=kind, metavar=dest.split("_")[0].upper(), help=text)


def sweep_options(args: argparse.Namespace):
    """The ``SweepOptions`` of ``--sweep`` (defaults for flags not given); sweep flags without --sweep are an error."""
    given = {dest: getattr(args, f"sweep_{dest}") for dest, _, _ in SWEEP_FLAGS.values() if getattr(args, f"sweep_{dest}") is not None}
    if not args.sweep:
        if given:
            flag = next(f for f, (d, _, _) in SWEEP_FLAGS.items() if d in given)
            raise ConfigError(flag, "only applies to sweeps.", f"Add --sweep, or drop {flag}.")
        return None
    if args.resume:
        raise ConfigError("--resume", "cannot be combined with --sweep.", "Re-run the same --sweep command to resume a study.")
    from sptrack.tune.options import SweepOptions

    return SweepOptions(**given)


def _general_help(parser: argparse.ArgumentParser) -> str:
    lines = [parser.format_help().rstrip(), "", "recipes:"]
    folder = recipes_dir()
    for path in sorted(folder.glob("*.py")) if folder.exists() else []:
        lines.append(f"  {path.relative_to(folder.parent)}")
    lines.append("\nRun `python -m sptrack.run RECIPE --help` to list a recipe's keys.")
    return "\n".join(lines)


def recipe_help(recipe: Recipe) -> str:
    """A recipe's docstring and every configurable key with its default."""
    lines = [f"{recipe.name}: {recipe.doc.splitlines()[0] if recipe.doc else ''}", "", "keys (key=value):"]
    for key, value in flatten(recipe.default_config()).items():
        lines.append(f"  {key} = {value!r}")
    return "\n".join(lines)


def resolve_config(recipe: Recipe, overrides: Sequence[str], args: argparse.Namespace) -> RecipeConfig:
    """Recipe defaults, then the ``key=value`` overrides, then the option shortcuts."""
    cfg = recipe.default_config()
    apply_overrides(cfg, list(overrides))
    if args.devices is not None:
        cfg.trainer.devices = args.devices
    if args.strategy is not None:
        cfg.trainer.strategy = args.strategy
    if args.accelerator is not None:
        cfg.trainer.accelerator = args.accelerator
    if args.max_epochs is not None:
        cfg.trainer.max_epochs = args.max_epochs
    if args.seed is not None:
        cfg.trainer.seed = args.seed
    if args.tracker is not None:
        cfg.tracker.kind = args.tracker
    if cfg.tracker.kind not in TRACKERS:
        raise ConfigError("tracker.kind", f"must be one of {', '.join(TRACKERS)}, got {cfg.tracker.kind!r}.")
    if cfg.trainer.strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", f"must be one of {', '.join(STRATEGIES)}, got {cfg.trainer.strategy!r}.")
    # From here on devices/num_nodes are ints: given, else the launcher's (torchrun, SLURM), else 1.
    t = cfg.trainer
    t.devices, t.num_nodes = resolve_devices(t.devices, t.num_nodes, devices_key="--devices" if args.devices is not None else "trainer.devices")
    cfg.trainer.check()
    cfg.eval.check()
    return cfg


def check_resume(value: Optional[str]) -> None:
    """``--resume``: ``auto`` or a checkpoint that exists (a file, or an FSDP2 checkpoint's folder)."""
    if value is None or value == "auto" or Path(value).exists():
        return
    raise ConfigError("--resume", f"no checkpoint at {value!r}.",
                      suggestion(value, ["auto"]).strip() or "Give an existing checkpoint path, or 'auto'.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.recipe is None:
        print(_general_help(parser))
        return 0 if args.help else 2
    try:
        recipe = load_recipe(args.recipe)
        if args.help:
            print(recipe_help(recipe))
            return 0
        cfg = resolve_config(recipe, args.overrides, args)
        check_resume(args.resume)
        sweep = sweep_options(args)
        if sweep is not None:
            from sptrack.tune.study import prepare

            space = prepare(recipe, cfg, sweep)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if sweep is not None:
        if args.dry_run:
            from sptrack.tune.study import storage_spec, study_name

            print(f"study {study_name(recipe, sweep)} in {storage_spec(recipe, cfg, sweep).url}: {sweep.trials} trials, "
                  f"objective {sweep.objective} ({sweep.direction})")
            for key, described in space.describe():
                print(f"  {key}: {described}")
            return 0
        from sptrack.tune.study import run_sweep

        try:
            return run_sweep(recipe, cfg, sweep, list(sys.argv[1:] if argv is None else argv))
        except ConfigError as err:  # e.g. an existing study made with another direction
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.dry_run:
        from sptrack.run.dry_run import print_dry_run

        print_dry_run(recipe, cfg)
        return 0
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sptrack.parallel.process_group import closes_process_group
    from sptrack.run.train import train

    try:
        with closes_process_group():  # the group Lightning creates, destroyed after a barrier before exit
            train(recipe, cfg, ckpt_path=args.resume)
    except SIGTERMException as stop:  # preempted: a checkpoint was written at the last boundary
        print("stopped by a signal after a checkpoint; continue with: --resume auto (same command)", file=sys.stderr)
        return int(stop.code or 1)
    return 0
