"""Typed recipe configuration: dataclasses, dotted keys, and ``key=value`` overrides.

This module imports nothing heavy (no torch) so that ``python -m sptrack.run --help`` is fast.
Override values are parsed as Python literals with ``ast.literal_eval`` (never ``eval``); a value
that is not a literal is taken as a string.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from sptrack.errors import ConfigError, suggestion
from sptrack.optim.entry import OptimizerEntry as OptimizerEntry  # the optimizer schema lives in the core; no torch


@dataclass
class DataConfig:
    """Which dataset to train on and how to batch it."""

    dataset: str = "mnist5k"
    batch_size: int = 256
    val_batch_size: int = 500
    num_workers: int = 0
    root: Optional[str] = None  # dataset="image_folder" | "hf" | "shards": the folder (a URL for shards)
    subset: Optional[int] = None  # use only N training samples, drawn with split_seed (quick runs)
    # Seed of the train/held-out partition (and of `subset`), apart from trainer.seed: runs with
    # different training seeds are then scored on the same held-out images.
    split_seed: int = 0
    # Share of the training images held back (seeded with split_seed, stratified by class, never
    # trained on) as the split that training evaluates on: online kNN/probe/RankMe, a sweep's
    # objective and pruning. The held-out split is then scored only by the end-of-run evaluation.
    # 0 (single runs): training evaluates on the held-out split, as the papers' online monitors do.
    validation_fraction: float = 0.0
    # dataset="image_folder" (and "hf" without a held-out split). ROOT/train/ and ROOT/val/, when both
    # exist, are the training and held-out splits; otherwise this share of ROOT/<class>/ is held out
    # (stratified by class, drawn with split_seed). Shards hold the split make_shards wrote.
    heldout_fraction: float = 0.2
    image_size: Optional[int] = None  # side the images are resized to when decoded; None: the recipe's input size
    grayscale: bool = False  # decode to 1 channel instead of 3 (RGB)
    # Where training views are cut from: "original", the full-resolution decode, in the loader
    # workers (uint8 crops to the device); or "resized", the image already resized to image_size,
    # on the device (bench/loader.py measures both).
    crop_from: str = "original"


@dataclass
class TrainerConfig:
    """Arguments passed to the Lightning Trainer."""

    max_epochs: int = 10
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: str = "norm"
    precision: str = "32-true"
    accelerator: str = "cpu"
    # None: what the launcher (torchrun, SLURM) started, else 1 (sptrack.parallel.launch.resolve_devices).
    devices: Optional[int] = None
    num_nodes: Optional[int] = None
    strategy: str = "auto"
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1  # at most; the last epoch always validates (trainer_args.validation_interval)
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    seed: int = 0
    output_dir: str = "runs"
    # Checkpoints inside an epoch (sptrack.run.checkpoints): by optimizer steps and by wall time (only
    # the newest such file is kept); at epoch ends the newest `keep_checkpoints` and last.ckpt.
    checkpoint_every_n_steps: Optional[int] = None
    checkpoint_every_minutes: Optional[float] = 30.0
    keep_checkpoints: int = 3


#: Environment variable with the default tracker kind (e.g. ``none`` on a machine that tracks nothing).
TRACKER_ENV = "SPTRACK_TRACKER"


@dataclass
class TrackerConfig:
    """Where the run is tracked ('mlflow', 'wandb' or 'none').

    ``kind`` defaults to ``$SPTRACK_TRACKER``, else ``mlflow``; MLflow with ``uri`` None records
    into ``$MLFLOW_TRACKING_URI``, else the embedded store ``<trainer.output_dir>/mlflow.db`` (one
    SQLite file shared by every run of that directory, so they can be compared; no server needed).
    """

    kind: str = field(default_factory=lambda: os.environ.get(TRACKER_ENV, "mlflow"))
    uri: Optional[str] = None
    experiment: Optional[str] = None
    run_name: Optional[str] = None


@dataclass
class EvalConfig:
    """The end-of-run linear evaluation."""

    baseline_inits: int = 5  # random-init encoders whose mean probe accuracy is the baseline


@dataclass
class RecipeConfig:
    """Fields every recipe has; recipes subclass it and add ``model`` and method sections."""

    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: dict = field(default_factory=dict)
    search_space: dict = field(default_factory=dict)


def to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists of a config (dataclasses converted recursively)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(to_dict(v) for v in cfg)
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of a config."""
    out: dict[str, Any] = {}
    items = to_dict(cfg)
    for key, value in items.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(obj)}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if getattr(tp, "__origin__", None) is Union:
        return " or ".join(_type_name(a) for a in tp.__args__)
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int widens to float); raise naming ``key``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(type(value) is type(c) and value == c for c in choices):  # True is not the choice 1
            return value
        hint = suggestion(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(key, f"must be {_type_name(tp)}, got {value!r}.", hint)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}.")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (tuple, list)):
            return (origin or tp)(value)
        raise ConfigError(key, f"expected a {(origin or tp).__name__}, got {type(value).__name__} {value!r}.", "Write e.g. (0.9, 0.999).")
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(key, f"expected a dict, got {type(value).__name__} {value!r}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(key, f"expected bool, got {type(value).__name__} {value!r}.", "Write True or False.")
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}.")
    return value


def parse_literal(text: str) -> Any:
    """A Python literal if ``text`` is one (numbers, True/None, tuples, ...), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_dotted(cfg: Any, key: str, value: Any) -> None:
    """Set ``cfg.<key>`` (dotted, through dataclasses and dicts), type-checked; unknown keys raise."""
    parts = key.split(".")
    node, walked = cfg, []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path = ".".join(walked + [part])
        if dataclasses.is_dataclass(node):
            types = _field_types(node)
            if part not in types:
                raise _unknown_key(cfg, path)
            if last:
                setattr(node, part, coerce(value, types[part], path))
                return
            node = getattr(node, part)
        elif isinstance(node, dict):
            if part not in node:
                raise _unknown_key(cfg, path)
            if last:
                current = node[part]
                tp = type(current) if current is not None and not dataclasses.is_dataclass(current) else Any
                if tp is int and isinstance(value, float):
                    raise ConfigError(path, f"expected int, got float {value!r}.")
                node[part] = coerce(value, float if tp is float else tp, path) if tp is not Any else value
                return
            node = node[part]
        else:
            raise _unknown_key(cfg, path)
        walked.append(part)


def _unknown_key(cfg: Any, path: str) -> ConfigError:
    keys = list(flatten(cfg))
    near = [k for k in keys if k.startswith(path.rpartition(".")[0])] if "." in path else keys
    hint = suggestion(path, keys) or (f"Keys under it: {', '.join(near[:8])}." if near else "")
    return ConfigError(path, "unknown configuration key.", hint + " List them with --help.")


def apply_overrides(cfg: Any, overrides: list[str]) -> None:
    """Apply ``key=value`` strings to ``cfg`` in order; every error names the key."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(item, "is not a key=value override.", "Write e.g. trainer.max_epochs=5.")
        set_dotted(cfg, key.strip(), parse_literal(raw.strip()))
