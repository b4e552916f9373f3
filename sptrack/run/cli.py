"""``python -m sptrack.run RECIPE [key=value ...] [options]``: train a recipe.

Only light modules are imported until training starts, so ``--help`` and errors come back fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from sptrack.errors import ConfigError, suggestion
from sptrack.parallel.launch import resolve_devices
from sptrack.recipe.config import RecipeConfig, apply_overrides, flatten
from sptrack.recipe.failures import TRACEBACK_ENV, one_line, wants_traceback
from sptrack.recipe.loading import Recipe, load_recipe, recipes_dir
from sptrack.recipe.presets import apply_preset, describe, find_preset, split_preset
from sptrack.recipe.validate import STRATEGIES, TRACKERS, check_config

USAGE = "python -m sptrack.run RECIPE [key=value ...] [options]"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors naming the option, with the closest option for typos."""

    def error(self, message: str):
        options = [o for action in self._actions for o in action.option_strings]
        if message.startswith("unrecognized arguments: "):
            first = message.split(": ", 1)[1].split()[0]
            flag = first.split("=", 1)[0]
            raise ConfigError(flag, "unknown option.", suggestion(flag, options) or "See --help for the options.")
        if message.startswith("argument "):
            flag, _, problem = message[len("argument "):].partition(": ")
            flag = flag.split("/")[-1]
            if problem.startswith("invalid choice: "):
                given = problem.split("'")[1] if "'" in problem else problem
                action = next(a for a in self._actions if flag in a.option_strings)
                choices = [str(c) for c in action.choices]
                raise ConfigError(flag, f"unknown value {given!r}.", suggestion(given, choices) or f"Use one of {', '.join(choices)}.")
            raise ConfigError(flag, f"{problem}.", "See --help.")
        raise ConfigError("arguments", f"{message}.", f"Usage: {USAGE}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options (overrides are the ``key=value`` positional arguments)."""
    # No abbreviations: a misspelt option is an error with a suggestion, not silently another option.
    parser = _Parser(prog="python -m sptrack.run", usage=USAGE, add_help=False, allow_abbrev=False)
    parser.add_argument("recipe", nargs="?", help="recipe file (recipes/dino.py) or name (dino)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.backbone.lr=1e-3")
    parser.add_argument("-h", "--help", action="store_true", help="show options, or a recipe's keys")
    parser.add_argument("--devices", type=int, help="processes/devices per node")
    parser.add_argument("--strategy", choices=STRATEGIES, help="distributed strategy")
    parser.add_argument("--accelerator", help="cpu, gpu, auto ...")
    parser.add_argument("--max-epochs", type=int, help="shortcut for trainer.max_epochs")
    parser.add_argument("--seed", type=int, help="shortcut for trainer.seed")
    parser.add_argument("--tracker", choices=TRACKERS, help="experiment tracker (default: $SPTRACK_TRACKER, else mlflow into <output_dir>/mlflow.db)")
    parser.add_argument("--resume", metavar="CKPT", help="continue exactly from a checkpoint, or 'auto': the newest of the recipe's runs")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and optimizers, do not train")
    parser.add_argument("--traceback", action="store_true", help=f"show the stack of an error instead of one line (also {TRACEBACK_ENV}=1)")
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
    "--pruner": ("pruner", str, "halving (successive halving, the default), median, hyperband or none"),
    "--objective": ("objective", str, "metric to optimise (default eval/knn_acc)"),
    "--direction": ("direction", str, "max (default) or min"),
    "--prune-every": ("prune_every", int, "report to the pruner every K optimizer steps (default: a tenth of a trial)"),
    "--prune-metric": ("prune_metric", str, "metric reported to the pruner (default: the objective)"),
    "--prune-startup": ("prune_startup", int, "trials before the median pruner prunes (default 3)"),
    "--prune-warmup": ("prune_warmup", float, "fraction of a trial's optimizer steps before it may be pruned (default 0)"),
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
    lines = [parser.format_help().rstrip(), "", "recipes (by name, or any recipe file's path):"]
    folder = recipes_dir()
    for path in sorted(folder.glob("*.py")) if folder.exists() else []:
        lines.append(f"  {path.stem:<8} {path}")
    lines.append("\nRun `python -m sptrack.run RECIPE --help` to list a recipe's keys.")
    return "\n".join(lines)


def recipe_help(recipe: Recipe) -> str:
    """A recipe's docstring and every configurable key with its default."""
    lines = [f"{recipe.name}: {recipe.doc.splitlines()[0] if recipe.doc else ''}", "", "keys (key=value):"]
    for key, value in flatten(recipe.default_config()).items():
        lines.append(f"  {key} = {value!r}")
    if recipe.presets:
        lines += ["", "presets (preset=NAME, applied before the other overrides):"]
        for name, preset in recipe.presets.items():
            lines += ["  " + line for line in describe(name, preset)]
    return "\n".join(lines)


#: Option shortcuts: flag -> the trainer key it sets (errors about the key then name the flag).
SHORTCUTS = {"--devices": "devices", "--strategy": "strategy", "--accelerator": "accelerator", "--max-epochs": "max_epochs", "--seed": "seed"}


def resolve_config(recipe: Recipe, overrides: Sequence[str], args: argparse.Namespace) -> RecipeConfig:
    """Recipe defaults, then a ``preset=NAME``, then the other ``key=value`` overrides, then the option shortcuts; checked."""
    cfg = recipe.default_config()
    default_dataset = cfg.data.dataset
    preset, overrides = split_preset(overrides)
    if preset is not None:
        apply_preset(cfg, find_preset(recipe.presets, preset, recipe.name))
    apply_overrides(cfg, list(overrides))
    given = {flag: getattr(args, field) for flag, field in SHORTCUTS.items() if getattr(args, field) is not None}
    for flag, value in given.items():
        setattr(cfg.trainer, SHORTCUTS[flag], value)
    if args.tracker is not None:
        cfg.tracker.kind = args.tracker
    if cfg.tracker.kind == "mlflow" and cfg.tracker.uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        cfg.tracker.uri = embedded_store_uri(cfg.trainer.output_dir)
    flags = {f"trainer.{SHORTCUTS[flag]}": flag for flag in given}
    try:
        # From here on devices/num_nodes are ints: given, else the launcher's (torchrun, SLURM), else 1.
        t = cfg.trainer
        t.devices, t.num_nodes = resolve_devices(t.devices, t.num_nodes, devices_key=flags.get("trainer.devices", "trainer.devices"))
        check_config(cfg, default_dataset)
    except ConfigError as err:
        if err.key not in flags:
            raise
        raise ConfigError(flags[err.key], str(err).split(": ", 1)[1]) from None
    return cfg


def embedded_store_uri(output_dir: str) -> str:
    """The MLflow store a run records into when nothing else is said: ``<output_dir>/mlflow.db``."""
    return "sqlite:///" + os.path.join(os.path.abspath(os.path.expanduser(output_dir)), "mlflow.db")


def check_resume(value: Optional[str]) -> None:
    """``--resume``: ``auto``, a checkpoint file (a ``torch.save`` zip), or an FSDP2 checkpoint's folder."""
    if value is None or value == "auto":
        return
    path = Path(value)
    if not path.exists():
        raise ConfigError("--resume", f"no checkpoint at {value!r}.",
                          suggestion(value, ["auto"]).strip() or "Give an existing checkpoint path, or 'auto'.")
    if path.is_dir():
        if not (path / ".metadata").is_file():  # what torch.distributed.checkpoint writes for a sharded save
            raise ConfigError("--resume", f"{value!r} is a directory, not a checkpoint.",
                              "Give a .ckpt file (e.g. version_0/checkpoints/last.ckpt), an FSDP2 checkpoint folder, or 'auto'.")
        return
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            complete = any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        complete = False
    if not complete:
        raise ConfigError("--resume", f"{value!r} is not a checkpoint (not a complete torch.save archive).",
                          "Give a .ckpt file written by a run, or 'auto' for the newest of the recipe's runs.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit code (2 for a bad input, printed as one ``error:`` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except Exception as err:  # noqa: BLE001 - what the user can fix is one line; anything else keeps its traceback
        line = one_line(err)
        if line is None or wants_traceback(argv):
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.recipe is None:
        print(_general_help(parser))
        return 0 if args.help else 2
    recipe = load_recipe(args.recipe)
    if args.help:
        print(recipe_help(recipe))
        return 0
    cfg = resolve_config(recipe, args.overrides, args)
    check_resume(args.resume)
    sweep = sweep_options(args)
    if sweep is not None:
        return _sweep(recipe, cfg, sweep, args, argv)
    if args.dry_run:
        from sptrack.run.dry_run import print_dry_run

        preset, _ = split_preset(args.overrides)
        if preset is not None:
            print("\n".join(describe(preset, recipe.presets[preset])))
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


def _sweep(recipe: Recipe, cfg: RecipeConfig, sweep, args: argparse.Namespace, argv: list[str]) -> int:
    from sptrack.tune.study import prepare, run_sweep, storage_spec, study_name

    if not args.dry_run:
        return run_sweep(recipe, cfg, sweep, argv)  # it runs every check of prepare() itself, once
    space = prepare(recipe, cfg, sweep)
    print(f"study {study_name(recipe, sweep)} in {storage_spec(recipe, cfg, sweep).shown_url}: {sweep.trials} trials, "
          f"objective {sweep.objective} ({sweep.direction})")
    for key, described in space.describe():
        print(f"  {key}: {described}")
    return 0
