"""The recipe layer: what a recipe is written with, and what the CLI (``sptrack.run``) and sweeps
(``sptrack.tune``) both stand on. Neither of those imports the other.

* :mod:`~sptrack.recipe.config` - the typed config dataclasses, dotted keys and ``key=value`` overrides;
* :mod:`~sptrack.recipe.validate` - every key's domain, checked before anything is built;
* :mod:`~sptrack.recipe.loading` - ``load_recipe``: a recipe file's ``Config`` and ``build``;
* :mod:`~sptrack.recipe.experiment` - the :class:`Experiment` a recipe's ``build`` returns;
* :mod:`~sptrack.recipe.parts` - shared loaders and online evaluation callbacks;
* :mod:`~sptrack.recipe.trainer_args` - the Lightning Trainer arguments of a config;
* :mod:`~sptrack.recipe.evaluate`, :mod:`~sptrack.recipe.final_eval` - the end-of-run linear probe;
* :mod:`~sptrack.recipe.failures` - errors a user can fix, as one line.

Only light modules are imported here (no torch), so ``--help`` and config errors stay fast.
"""

from sptrack.recipe.config import DataConfig, EvalConfig, OptimizerEntry, RecipeConfig, TrackerConfig, TrainerConfig
from sptrack.recipe.experiment import Experiment
from sptrack.recipe.loading import Recipe, load_recipe

__all__ = ["DataConfig", "EvalConfig", "Experiment", "OptimizerEntry", "Recipe", "RecipeConfig", "TrackerConfig", "TrainerConfig",
           "load_recipe"]
