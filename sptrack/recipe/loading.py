"""Load a recipe file: a Python module declaring ``Config`` (a RecipeConfig dataclass) and ``build``.

A recipe file defines::

    @dataclass
    class Config(RecipeConfig): ...        # every knob, typed, with defaults
    def build(cfg: Config) -> Experiment:  # the Module, data and callbacks for that config

Heavy imports belong inside ``build`` so that listing a recipe's keys stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from sptrack.errors import ConfigError, suggestion
from sptrack.recipe.config import RecipeConfig
from sptrack.recipe.experiment import Experiment
from sptrack.recipe.failures import recipe_failure
from sptrack.recipe.presets import Preset


@dataclass
class Recipe:
    """A loaded recipe: its name, path, config class and build function."""

    name: str
    path: Path
    config_cls: type
    build: Callable[[Any], Experiment]
    doc: str
    presets: dict = field(default_factory=dict)  # name -> sptrack.recipe.presets.Preset

    def default_config(self) -> RecipeConfig:
        """A fresh config with the recipe's defaults."""
        try:
            return self.config_cls()
        except Exception as err:  # noqa: BLE001 - a failing default is the recipe's, named by file and line
            raise recipe_failure(self.path, err, "Config()") from err

    def build_experiment(self, cfg: RecipeConfig) -> Experiment:
        """``build(cfg)``; a ConfigError passes through, any other error names the recipe's line."""
        try:
            return self.build(cfg)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001
            raise recipe_failure(self.path, err, "build(cfg)") from err


def recipes_dir() -> Path:
    """The recipes shipped with the package (``sptrack/recipes``; ``recipes/`` in a checkout links there)."""
    return Path(__file__).resolve().parents[1] / "recipes"


def _resolve_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix != ".py":
        candidate = recipes_dir() / f"{spec}.py"
        if candidate.exists():
            return candidate
    if path.exists():
        return path
    known = sorted(p.stem for p in recipes_dir().glob("*.py")) if recipes_dir().exists() else []
    raise ConfigError(
        "recipe",
        f"no recipe file {spec!r}.",
        suggestion(Path(spec).stem, known) or (f"Available: {', '.join(known)}." if known else ""),
    )


def load_recipe(spec: str) -> Recipe:
    """Import a recipe by path (``recipes/dino.py``) or name (``dino``) and check its contents."""
    path = _resolve_path(spec).resolve()
    module_name = f"sptrack_recipe_{path.stem}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    module: ModuleType = importlib.util.module_from_spec(import_spec)
    # dataclasses look their module up in sys.modules while the class body is processed.
    sys.modules[module_name] = module
    try:
        import_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error of the user's file becomes one line naming its line
        del sys.modules[module_name]
        raise recipe_failure(path, err, "import") from err
    config_cls = getattr(module, "Config", None)
    build = getattr(module, "build", None)
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls) and issubclass(config_cls, RecipeConfig)):
        raise ConfigError(f"recipe {path.name}", "must define `class Config(RecipeConfig)` as a dataclass.")
    if not callable(build):
        raise ConfigError(f"recipe {path.name}", "must define `build(cfg) -> Experiment`.")
    presets = getattr(module, "PRESETS", {})
    if not isinstance(presets, dict) or not all(isinstance(p, Preset) for p in presets.values()):
        raise ConfigError(f"recipe {path.name}", "PRESETS must be a dict of name -> sptrack.recipe.presets.Preset.")
    return Recipe(name=path.stem, path=path, config_cls=config_cls, build=build, doc=(module.__doc__ or "").strip(), presets=presets)
