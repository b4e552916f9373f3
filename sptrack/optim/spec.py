"""Parse the four ways users name a class with arguments: a string, a dict, a partial, or the class.

Both optimizers and schedulers are declared this way; this module turns any of the forms into one
:class:`ClassSpec` (class + keyword arguments) and validates the argument names against the class
signature, so a typo fails at configuration time with the offending key named.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from sptrack.errors import ConfigError, suggestion, unknown_name_error


@dataclass
class ClassSpec:
    """A resolved declaration: ``cls(first_arg, **kwargs)`` builds the object.

    ``factory`` is set instead of ``cls`` when the user gave an opaque callable; it is called as
    ``factory(first_arg)`` and nothing about it can be validated or defaulted.
    """

    cls: Optional[type] = None
    kwargs: dict = field(default_factory=dict)
    factory: Optional[Callable[[Any], Any]] = None

    @property
    def name(self) -> str:
        """Human-readable name of what this spec builds."""
        if self.cls is not None:
            return self.cls.__name__
        return getattr(self.factory, "__name__", type(self.factory).__name__)

    def build(self, first_arg, extra_kwargs: Optional[Mapping[str, Any]] = None):
        """Instantiate; ``extra_kwargs`` are defaults that the declared arguments override."""
        if self.cls is None:
            return self.factory(first_arg)
        kwargs = dict(extra_kwargs or {})
        kwargs.update(self.kwargs)
        return self.cls(first_arg, **kwargs)


def accepted_arguments(cls: type) -> Optional[set[str]]:
    """Keyword names ``cls.__init__`` accepts after its first argument; None if it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_arguments(cls: type, arguments: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` at the key of the first argument ``cls`` does not take.

    ``arguments`` maps each keyword to the dotted key it was declared at.
    """
    accepted = accepted_arguments(cls)
    if accepted is None:
        return
    for name, key in arguments.items():
        if name not in accepted:
            raise ConfigError(
                key,
                f"{cls.__name__} has no argument {name!r}.",
                suggestion(name, accepted) or f"It accepts: {', '.join(sorted(accepted))}.",
            )


def resolve_class_spec(
    spec: Any, key: str, registry: Mapping[str, type], kind: str, base: type
) -> ClassSpec:
    """Turn ``spec`` (str | dict | partial | class | callable) into a validated :class:`ClassSpec`.

    ``registry`` maps accepted string names to classes; ``base`` is the class every resolved class
    must derive from; ``kind`` ("optimizer", "scheduler") is used in messages.
    """

    def lookup(name: str, where: str) -> type:
        if name in registry:
            return registry[name]
        folded = {k.lower(): v for k, v in registry.items()}
        if name.lower() in folded:
            return folded[name.lower()]
        raise unknown_name_error(where, kind, name, registry)

    if isinstance(spec, str):
        return ClassSpec(cls=lookup(spec, key))
    if isinstance(spec, Mapping):
        if "type" not in spec:
            raise ConfigError(
                key,
                f"a {kind} dict needs a 'type' entry; got keys {sorted(spec)}.",
                f"Write e.g. {{'type': {next(iter(sorted(registry)))!r}, ...}}.",
            )
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        inner = resolve_class_spec(spec["type"], f"{key}.type", registry, kind, base)
        if inner.cls is None:
            raise ConfigError(f"{key}.type", f"must be a {kind} name or class, got {spec['type']!r}.")
        check_arguments(inner.cls, {k: f"{key}.{k}" for k in kwargs})
        return ClassSpec(cls=inner.cls, kwargs={**inner.kwargs, **kwargs})
    if isinstance(spec, functools.partial):
        if spec.args:
            raise ConfigError(
                key,
                f"a {kind} partial must bind keyword arguments only, got positional {spec.args!r}.",
                "Bind them by name, e.g. partial(torch.optim.SGD, lr=0.1).",
            )
        inner = resolve_class_spec(spec.func, key, registry, kind, base)
        if inner.cls is None:
            return ClassSpec(factory=spec)
        check_arguments(inner.cls, {k: f"{key}.{k}" for k in spec.keywords})
        return ClassSpec(cls=inner.cls, kwargs={**inner.kwargs, **spec.keywords})
    if isinstance(spec, type):
        if not issubclass(spec, base):
            raise ConfigError(key, f"{spec.__name__} is not a {base.__module__}.{base.__name__} subclass.")
        return ClassSpec(cls=spec)
    if callable(spec):
        return ClassSpec(factory=spec)
    raise ConfigError(
        key,
        f"cannot build a {kind} from {type(spec).__name__} {spec!r}.",
        f"Give a {kind} name, a dict with 'type', a functools.partial, a class or a callable.",
    )
