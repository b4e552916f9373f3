"""The declarative search space of a recipe: parse, validate against the config, sample, apply.

A recipe declares ``Config.search_space`` as ``{dotted key pattern: range}``:

* the key is a config key as written in ``key=value`` overrides; ``*`` stands for any one
  segment, so ``"optim.*.lr"`` means the learning rate of every named optimizer;
* the range is one of

  - ``"log-uniform LOW..HIGH"`` / ``"uniform LOW..HIGH"``: a float (log scale or linear);
  - ``"int LOW..HIGH"`` / ``"log-int LOW..HIGH"``: an integer, both ends included;
  - a list/tuple of values: one of them (numbers, strings, bools or None);

  a bound written ``xF`` (e.g. ``x0.1``) is ``F`` times the recipe's value of that key, so
  ``"log-uniform x0.1..x10"`` searches a decade either side of each optimizer's own lr.

Everything is checked before the first trial: unknown keys (with a close-match suggestion), empty
or reversed ranges, values of the wrong type for the key, ``lr <= 0``, ``frequency < 1``, and any
value the named optimizer's constructor rejects (e.g. a negative weight decay). Bounds are parsed
with ``float()``, never evaluated.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from sptrack.errors import ConfigError, suggestion
from sptrack.recipe.config import OptimizerEntry, flatten, set_dotted
from sptrack.recipe.validate import check_optimizer_accepts, rule_for

KINDS = ("log-uniform", "uniform", "int", "log-int")
# ".." is the only separator: "1e-5...1e-2" does not match (it is not 1e-5 .. .1e-2).
_RANGE = re.compile(r"^\s*(?P<kind>[a-z-]+)\s+(?P<low>\S*?[^.\s])\s*\.\.\s*(?P<high>[^.\s]\S*)\s*$")
_NUMBER = re.compile(r"^(?P<rel>x)?(?P<num>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$")
_OPTIMIZER_FIELDS = ("lr", "weight_decay", "momentum", "betas")


@dataclass(frozen=True)
class Param:
    """One concrete searched key: ``kind`` is a range kind or ``"choice"``."""

    key: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple] = None

    def describe(self) -> str:
        """``log-uniform 5e-05..0.005`` or ``choice [1, 2]``."""
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        return f"{self.kind} {self.low:g}..{self.high:g}"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this parameter can take."""
        if self.kind == "choice":
            return value in self.choices
        return self.low <= value <= self.high


class SearchSpace:
    """The validated, expanded search space of one config (``params`` in declaration order)."""

    def __init__(self, params: Sequence[Param]):
        self.params = list(params)

    @classmethod
    def from_config(cls, cfg: Any, space: Optional[Mapping[str, Any]] = None) -> "SearchSpace":
        """Expand and validate ``space`` (default: ``cfg.search_space``) against ``cfg``."""
        space = cfg.search_space if space is None else space
        if not isinstance(space, Mapping) or not space:
            raise ConfigError(
                "search_space", f"must be a non-empty dict of dotted key -> range, got {space!r}.",
                'Declare e.g. search_space = {"optim.*.lr": "log-uniform x0.1..x10", "optim.*.frequency": [1, 2]}.',
            )
        values = {k: v for k, v in flatten(cfg).items() if not k.startswith("search_space.") and k != "search_space"}
        params: dict[str, Param] = {}
        for pattern, spec in space.items():
            keys = _expand(pattern, values)
            for key in keys:
                params[key] = _parse(key, spec, values[key], pattern)
                _check_types(cfg, params[key])
        _check_optimizers(cfg, params.values())
        return cls(list(params.values()))

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` (an ``optuna.Trial``) for a value of every parameter."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "choice":
                out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.kind in ("int", "log-int"):
                out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.kind == "log-int")
            else:
                out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.kind == "log-uniform")
        return out

    @staticmethod
    def apply(cfg: Any, params: Mapping[str, Any]) -> Any:
        """A copy of ``cfg`` with ``params`` set (type-checked like ``key=value`` overrides)."""
        out = copy.deepcopy(cfg)
        for key, value in params.items():
            set_dotted(out, key, value)
        return out

    def describe(self) -> list[tuple[str, str]]:
        """``[(key, range)]`` for printing."""
        return [(p.key, p.describe()) for p in self.params]


def _expand(pattern: Any, values: Mapping[str, Any]) -> list[str]:
    if not isinstance(pattern, str) or not pattern or any(not part for part in pattern.split(".")):
        raise ConfigError(f"search_space[{pattern!r}]", "must be a dotted config key such as 'optim.*.lr'.")
    parts = pattern.split(".")
    # '*' matches exactly one segment (fnmatch alone would let it cross dots).
    hits = [k for k in values if len(k.split(".")) == len(parts) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(k.split("."), parts))]
    if not hits:
        keys = list(values)
        hint = suggestion(pattern, keys) or suggestion(pattern.replace("*", ""), keys)
        raise ConfigError(f"search_space[{pattern!r}]", "matches no configuration key.", (hint + " List the keys with --help.").strip())
    return hits


def _bound(text: str, key: str, default: Any, where: str) -> float:
    match = _NUMBER.match(text)
    if not match:
        raise ConfigError(where, f"bound {text!r} is not a number.", "Write e.g. 1e-4, or x0.1 for a tenth of the recipe's value.")
    number = float(match["num"])
    if match["rel"]:
        if isinstance(default, bool) or not isinstance(default, (int, float)) or default == 0:
            raise ConfigError(where, f"relative bound {text!r} needs a non-zero number as the recipe's value of {key}, which is {default!r}.",
                              "Give absolute bounds instead.")
        number *= default
    return number


def _parse(key: str, spec: Any, default: Any, pattern: str) -> Param:
    where = f"search_space[{pattern!r}]" if pattern == key else f"search_space[{pattern!r}] ({key})"
    if isinstance(spec, (list, tuple)):
        choices = tuple(spec)
        if not choices:
            raise ConfigError(where, "is an empty list of choices.", "Give at least one value, e.g. [1, 2].")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise ConfigError(where, f"choice {bad[0]!r} is not a number, string, bool or None.", "Optuna stores only plain values.")
        param = Param(key, "choice", choices=choices)
        for value in choices:
            _check_rule(param, value, where)
        return param
    if not isinstance(spec, str):
        raise ConfigError(where, f"must be a range string or a list of choices, got {type(spec).__name__} {spec!r}.",
                          'Write e.g. "log-uniform 1e-4..1e-2", "int 1..4" or [1, 2].')
    match = _RANGE.match(spec)
    if not match:
        raise ConfigError(where, f"range {spec!r} is not 'KIND LOW..HIGH'.", f"KIND is one of {', '.join(KINDS)}; e.g. 'log-uniform x0.1..x10'.")
    kind = match["kind"]
    if kind not in KINDS:
        raise ConfigError(where, f"unknown range kind {kind!r}.", suggestion(kind, KINDS) or f"Use one of {', '.join(KINDS)}.")
    low, high = _bound(match["low"], key, default, where), _bound(match["high"], key, default, where)
    if kind in ("int", "log-int"):
        if low != int(low) or high != int(high):
            raise ConfigError(where, f"{kind} bounds must be whole numbers, got {low:g}..{high:g}.")
        low, high = int(low), int(high)
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ConfigError(where, f"needs LOW < HIGH (finite), got {low:g}..{high:g}.", "Swap or widen the bounds, or use a list for a single value.")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(where, f"a log range needs LOW > 0, got {low:g}.", "Use a positive lower bound.")
    param = Param(key, kind, low=low, high=high)
    for value in (low, high):
        _check_rule(param, value, where)
    return param


def _check_rule(param: Param, value: Any, where: str) -> None:
    leaf = param.key.rsplit(".", 1)[-1]
    rule = rule_for(leaf)  # the config's own domain of that key (sptrack.recipe.validate)
    if rule is None or value is None:
        return
    ok, must = rule
    try:
        passed = ok(value)
    except TypeError:
        passed = False
    if not passed:
        raise ConfigError(where, f"{leaf} must be {must}, but the range allows {value!r}.", f"Narrow the range of {param.key}.")


def _check_types(cfg: Any, param: Param) -> None:
    """Every value the parameter can take must be accepted by the config field (same rules as overrides)."""
    probe = copy.deepcopy(cfg)
    values = param.choices if param.kind == "choice" else (param.low, param.high)
    for value in values:
        try:
            set_dotted(probe, param.key, value)
        except ConfigError as err:
            raise ConfigError(f"search_space ({param.key})", f"{param.describe()} does not fit the key: {err}") from None


def _check_optimizers(cfg: Any, params: Sequence[Param]) -> None:
    """Build each searched optimizer at every extreme of its searched arguments; its own checks must pass.

    Searched arguments are the entry's ``lr``, ``weight_decay``, ``momentum``, ``betas`` and any
    ``optimizer_args.<argument>``.
    """
    optim = getattr(cfg, "optim", None)
    touched: dict[str, list[Param]] = {}
    for p in params:
        parts = p.key.split(".")
        if parts[0] != "optim" or not isinstance(optim, dict) or not isinstance(optim.get(parts[1]), OptimizerEntry):
            continue
        if (len(parts) == 3 and parts[2] in _OPTIMIZER_FIELDS) or (len(parts) == 4 and parts[2] == "optimizer_args"):
            touched.setdefault(parts[1], []).append(p)
    if not touched:
        return
    for name, fields in touched.items():
        entry = optim[name]
        try:
            check_optimizer_accepts(entry, f"optim.{name}")
        except ConfigError:
            continue  # a bad recipe value (e.g. an unknown type) is reported by the config check with its own suggestion
        for p in fields:
            leaf = p.key.rsplit(".", 1)[1]
            for value in (p.choices if p.kind == "choice" else (p.low, p.high)):
                trial_entry = copy.deepcopy(entry)
                if p.key.count(".") == 3:
                    trial_entry.optimizer_args[leaf] = value
                else:
                    setattr(trial_entry, leaf, value)
                try:
                    check_optimizer_accepts(trial_entry, f"optim.{name}")
                except ConfigError as err:
                    raise ConfigError(f"search_space ({p.key})", f"{leaf}={value!r}: {str(err).split(': ', 1)[1]}",
                                      f"Narrow the range of {p.key}.") from None
