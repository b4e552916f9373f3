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
    #: The tree it was computed on: module names, then ``(parameter name, requires_grad)`` pairs.
    layout: tuple = ()

    def rebind(self, root: nn.Module, exclude: Iterable[str] = ()) -> Optional["Assignment"]:
        """This assignment on ``root``'s current parameter objects, or None if the tree has changed.

        The owners depend only on module names, parameter names, sharing and ``requires_grad``; when
        those are what they were, each owner's parameters are looked up again by name (sharding, e.g.
        FSDP2, replaces the parameter objects but keeps their names). Anything else (a module added
        or removed, a parameter frozen, weights tied) needs a new :func:`assign_parameters`.
        """
        walked = _walk(root, tuple(exclude))
        if _layout(walked) != self.layout:
            return None
        current = {full: param for _, _, params in walked for full, param in params}
        return Assignment(
            params={name: [(full, current[full]) for full, _ in owned] for name, owned in self.params.items()},
            matched={name: list(mods) for name, mods in self.matched.items()},
            unassigned=list(self.unassigned),
            layout=self.layout,
        )


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(name == ex or name.startswith(ex + ".") for ex in exclude)


def _walk(root: nn.Module, exclude: tuple) -> list[tuple[str, nn.Module, list[tuple[str, nn.Parameter]]]]:
    """``(module name, module, [(qualified parameter name, parameter)])`` in definition order, excluded
    subtrees left out (a tied parameter appears under every module that holds it)."""
    out = []
    for mod_name, module in root.named_modules():
        if _excluded(mod_name, exclude):
            continue
        params = [(f"{mod_name}.{p_name}" if mod_name else p_name, param) for p_name, param in module.named_parameters(recurse=False)]
        out.append((mod_name, module, params))
    return out


def _layout(walked) -> tuple:
    first: dict[int, str] = {}
    params = []
    for _, _, named in walked:
        for full, param in named:
            # A tied parameter is recorded as an alias of its first name, so tying or untying changes the layout.
            params.append((full, bool(param.requires_grad), first.setdefault(id(param), full)))
    return tuple(m for m, _, _ in walked), tuple(params)


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
    walked = _walk(root, exclude)
    patterns = [(c.name, c.modules, re.compile(c.modules)) for c in configs if c.modules is not None]
    catch_all: Optional[str] = next((c.name for c in configs if c.modules is None), None)
    result = Assignment(params={c.name: [] for c in configs}, matched={c.name: [] for c in configs}, layout=_layout(walked))
    owner_of_module: dict[str, Optional[str]] = {}
    owner_of_param: dict[int, tuple[str, Optional[str]]] = {}
    module_names: list[str] = []

    for mod_name, _, named in walked:
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

        for full, param in named:
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
            names = [m for m in module_names if m]
            raise ConfigError(
                f"{key}.{name}.modules",
                f"pattern {pattern!r} matches no module (patterns must match the full qualified name).",
                suggestion(pattern, names) or f"Module names include: {', '.join(names[:10])}.",
            )
    return result
