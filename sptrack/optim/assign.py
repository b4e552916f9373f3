"""Assign parameters to named optimizers by full-match regexes over qualified module names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from torch import nn

from sptrack.errors import ConfigError, suggestion
from sptrack.optim.config import OptimizerConfig


@dataclass
class Assignment:
    """Which parameters each optimizer owns.

    ``params[name]`` lists ``(qualified_name, parameter)`` pairs; ``matched[name]`` lists the modules
    whose own name matched that optimizer's pattern (their children inherit); ``unassigned`` names
    trainable parameters that no optimizer owns.
    """

    params: dict[str, list] = field(default_factory=dict)
    matched: dict[str, list[str]] = field(default_factory=dict)
    unassigned: list[str] = field(default_factory=list)


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(name == ex or name.startswith(ex + ".") for ex in exclude)


def assign_parameters(
    root: nn.Module, configs: Sequence[OptimizerConfig], exclude: Iterable[str] = (), key: str = "optim"
) -> Assignment:
    """Walk ``root``'s modules in definition order and give each module's direct parameters an owner.

    A module's owner is the optimizer whose pattern matches its qualified name in full; if none
    matches it inherits its parent's owner (the root belongs to the catch-all optimizer, if any).
    Two patterns matching one module, a pattern matching nothing, or one parameter (tied weights)
    reached under two owners are configuration errors. Frozen parameters are skipped.
    """
    exclude = tuple(exclude)
    patterns = [(c.name, c.modules, re.compile(c.modules)) for c in configs if c.modules is not None]
    catch_all: Optional[str] = next((c.name for c in configs if c.modules is None), None)
    result = Assignment(params={c.name: [] for c in configs}, matched={c.name: [] for c in configs})
    owner_of_module: dict[str, Optional[str]] = {}
    owner_of_param: dict[int, tuple[str, Optional[str]]] = {}
    module_names: list[str] = []

    for mod_name, module in root.named_modules():
        if _excluded(mod_name, exclude):
            continue
        module_names.append(mod_name)
        if mod_name == "":
            owner = catch_all
        else:
            hits = [(name, pat) for name, pat, rx in patterns if rx.fullmatch(mod_name)]
            if len(hits) > 1:
                listed = " and ".join(f"optim.{n}.modules={p!r}" for n, p in hits)
                raise ConfigError(
                    f"optim.{hits[0][0]}.modules",
                    f"module {mod_name!r} is matched by {listed}.",
                    "Make the patterns disjoint (patterns match the full qualified name).",
                )
            if hits:
                owner = hits[0][0]
                result.matched[owner].append(mod_name)
            else:
                owner = owner_of_module[mod_name.rpartition(".")[0]]
        owner_of_module[mod_name] = owner

        for p_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            seen = owner_of_param.get(id(param))
            if seen is not None:
                if seen[1] != owner:
                    raise ConfigError(
                        f"optim.{owner or seen[1]}.modules",
                        f"tied parameter {seen[0]!r} (also reached as {full!r}) is claimed by "
                        f"{seen[1]!r} and {owner!r}.",
                        "Assign both modules that share it to the same optimizer.",
                    )
                continue
            owner_of_param[id(param)] = (full, owner)
            if not param.requires_grad:
                continue
            if owner is None:
                result.unassigned.append(full)
            else:
                result.params[owner].append((full, param))

    for name, pattern, _ in patterns:
        if not result.matched[name]:
            named = [m for m in module_names if m]
            raise ConfigError(
                f"{key}.{name}.modules",
                f"pattern {pattern!r} matches no module (patterns must match the full qualified name).",
                suggestion(pattern, named) or f"Module names include: {', '.join(named[:10])}.",
            )
    return result
