"""Recipe configuration: dotted overrides, their errors, recipe loading and CLI parsing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from sptrack.errors import ConfigError
from sptrack.recipe.config import OptimizerEntry, RecipeConfig, apply_overrides, flatten, parse_literal
from sptrack.recipe.loading import load_recipe
from sptrack.run.cli import main

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ModelCfg:
    depth: int = 4
    width: float = 1.5
    name: str = "vit"
    dropout: float | None = None
    flag: bool = False
    pool: Literal["cls", "mean"] = "mean"


@dataclass
class Cfg(RecipeConfig):
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: dict = field(default_factory=lambda: {"backbone": OptimizerEntry(modules="backbone", lr=1e-3)})


def test_overrides_are_typed_literals():
    cfg = Cfg()
    apply_overrides(cfg, ["optim.backbone.lr=3e-4", "trainer.max_epochs=5", "data.batch_size=128", "model.width=2",
                          "model.name=cnn", "model.dropout=0.1", "model.flag=True", "optim.backbone.betas=(0.9, 0.95)",
                          "trainer.gradient_clip_val=None", "model.pool=cls"])
    assert cfg.optim["backbone"].lr == 3e-4 and cfg.trainer.max_epochs == 5 and cfg.data.batch_size == 128
    assert cfg.model.width == 2.0 and isinstance(cfg.model.width, float)
    assert (cfg.model.name, cfg.model.dropout, cfg.model.flag) == ("cnn", 0.1, True)
    assert cfg.optim["backbone"].betas == (0.9, 0.95) and cfg.model.pool == "cls"
    assert flatten(cfg)["optim.backbone.lr"] == 3e-4


def test_literal_parsing_never_evaluates_code():
    assert parse_literal("__import__('os').system('echo hacked')") == "__import__('os').system('echo hacked')"
    assert parse_literal("[1, 2]") == [1, 2] and parse_literal("abc") == "abc"


@pytest.mark.parametrize(
    "override,key,fragment",
    [
        ("optim.backbone.lrr=1", "optim.backbone.lrr", "Did you mean 'optim.backbone.lr'"),
        ("trainer.max_epoch=3", "trainer.max_epoch", "Did you mean 'trainer.max_epochs'"),
        ("optim.backbon.lr=1", "optim.backbon", "unknown configuration key"),
        ("model.depth=2.5", "model.depth", "expected int, got float 2.5"),
        ("model.depth=abc", "model.depth", "expected int, got str 'abc'"),
        ("model.flag=1", "model.flag", "expected bool"),
        ("model.width=wide", "model.width", "expected float, got str"),
        ("data.batch_size", "data.batch_size", "not a key=value override"),
        ("optim.backbone.betas=0.9", "optim.backbone.betas", "expected tuple or None, got float 0.9"),
        ("nosuch=1", "nosuch", "unknown configuration key"),
        ("model.pool=mena", "model.pool", "must be one of 'cls', 'mean', got 'mena'. Did you mean 'mean'?"),
        ("model.pool=1", "model.pool", "must be one of 'cls', 'mean', got 1."),
    ],
)
def test_override_errors_name_the_key(override, key, fragment):
    cfg = Cfg()
    before = flatten(cfg)
    with pytest.raises(ConfigError) as err:
        apply_overrides(cfg, [override])
    assert err.value.key == key and fragment in str(err.value)
    assert flatten(cfg) == before


RECIPE = textwrap.dedent('''
    """A toy recipe for CLI tests."""
    from dataclasses import dataclass, field
    from sptrack.recipe.config import RecipeConfig

    @dataclass
    class Model:
        depth: int = 2

    @dataclass
    class Config(RecipeConfig):
        model: Model = field(default_factory=Model)

    def build(cfg):
        raise RuntimeError("not built in this test")
''')


def test_recipe_loading_and_cli_errors(tmp_path, capsys):
    path = tmp_path / "toy.py"
    path.write_text(RECIPE)
    recipe = load_recipe(str(path))
    assert recipe.name == "toy" and recipe.default_config().model.depth == 2
    assert main([str(path), "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.depth = 2" in out and "trainer.max_epochs" in out
    assert main([str(path), "model.deepth=3"]) == 2
    assert "model.deepth: unknown configuration key. Did you mean 'model.depth'" in capsys.readouterr().err
    assert main([str(path), "--tracker", "none", "trainer.strategy=fsdp"]) == 2
    assert "trainer.strategy: must be one of auto, ddp, fsdp2" in capsys.readouterr().err
    assert main(["no_such_recipe"]) == 2
    assert "recipe: no recipe file 'no_such_recipe'" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    assert main([str(bad)]) == 2
    assert "must define `class Config(RecipeConfig)`" in capsys.readouterr().err


def test_help_is_fast_and_lists_recipes():
    """--help must not import torch (its start-up time is measured in bench/)."""
    code = "import sys; from sptrack.run.cli import main; main(['--help']); print('TORCH', 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    listed = out.stdout.split("recipes (by name, or any recipe file's path):", 1)[1]
    assert "recipes/dino.py" in listed
    assert "TORCH False" in out.stdout


def test_validation_interval_always_includes_the_last_epoch():
    """At most every N epochs, the largest divisor of max_epochs: a 1-epoch run of a recipe that validates
    every 5 still ends with its online metrics; a step-bounded run keeps N."""
    from sptrack.recipe.trainer_args import validation_interval

    assert [validation_interval(5, e) for e in (30, 25, 12, 7, 1)] == [5, 5, 4, 1, 1]
    assert validation_interval(1, 30) == 1 and validation_interval(7, 28) == 7 and validation_interval(5, -1) == 5
