"""Presets: a recipe's published settings under one name, chosen on the command line with ``preset=NAME``.

A recipe file may define ``PRESETS = {name: Preset(...)}``. The preset's values are applied to the
recipe's defaults first, then the command line's other ``key=value`` overrides (so any of them can
still be changed). Torch-free, like the rest of the config layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from sptrack.errors import ConfigError, suggestion

#: The override key that names a preset.
PRESET_KEY = "preset"


@dataclass(frozen=True)
class Preset:
    """Named settings of a recipe: ``values`` maps dotted keys to values; ``source`` says where they come from."""

    summary: str
    source: str
    values: Mapping[str, Any] = field(default_factory=dict)


def split_preset(overrides: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``(preset name or None, the other overrides)``; a second ``preset=`` is an error."""
    names = [item.partition("=")[2].strip() for item in overrides if item.partition("=")[0].strip() == PRESET_KEY]
    if len(names) > 1:
        raise ConfigError(PRESET_KEY, f"is given {len(names)} times ({', '.join(names)}).", "Choose one preset.")
    rest = [item for item in overrides if item.partition("=")[0].strip() != PRESET_KEY]
    return (names[0] if names else None), rest


def find_preset(presets: Mapping[str, Preset], name: str, recipe: str) -> Preset:
    """The preset ``name``; a ConfigError naming the recipe's presets (and the closest one) otherwise."""
    if name in presets:
        return presets[name]
    known = ", ".join(sorted(presets)) or "none"
    hint = suggestion(name, presets) or ""
    raise ConfigError(PRESET_KEY, f"recipe {recipe!r} has no preset {name!r} (its presets: {known}).", hint)


def apply_preset(cfg: Any, preset: Preset) -> None:
    """Set every value of ``preset`` on ``cfg`` (type-checked like any override)."""
    from sptrack.recipe.config import set_dotted

    for key, value in preset.values.items():
        set_dotted(cfg, key, value)


def describe(name: str, preset: Preset) -> list[str]:
    """Lines for ``--help`` and ``--dry-run``: the preset, its source and every value it sets."""
    return [f"preset={name}: {preset.summary} ({preset.source})", *(f"  {key} = {value!r}" for key, value in preset.values.items())]
