"""``--dry-run``: show the resolved configuration and the optimizers it would train, then stop."""

from __future__ import annotations

from rich.table import Table

from sptrack.console import print_table
from sptrack.module.slots import render_summary
from sptrack.parallel.launch import detect
from sptrack.recipe.config import RecipeConfig, flatten
from sptrack.recipe.loading import Recipe


def print_dry_run(recipe: Recipe, cfg: RecipeConfig) -> list[dict]:
    """Print every resolved key and the optimizer plan (modules, parameter counts); return the plan."""
    table = Table(title=f"{recipe.name}: resolved configuration")
    table.add_column("key")
    table.add_column("value")
    defaults = flatten(recipe.default_config())
    for key, value in flatten(cfg).items():
        changed = defaults.get(key, object()) != value
        table.add_row(f"[bold]{key}[/bold]" if changed else key, repr(value))
    print_table(table)
    print(f"trainer.devices={cfg.trainer.devices}, trainer.num_nodes={cfg.trainer.num_nodes}; {detect().describe()}")
    experiment = recipe.build_experiment(cfg)
    for callback in experiment.callbacks:
        # Callbacks that own optimizers register them on the Module; do it now so the plan shows them.
        register = getattr(callback, "register", None)
        if callable(register):
            register(experiment.module)
    plan = experiment.module.plan_optimizers()
    print_table(render_summary(plan))
    return plan
