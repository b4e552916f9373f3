"""Domain checks of a resolved recipe config, run before anything is built, trained or written.

Types are checked when a value is set (:func:`sptrack.recipe.config.coerce`); this module checks what
each key may *be*: counts >= 1, non-negative clip values, known precision and accelerator names,
learning rates > 0 and finite, optimizer and scheduler names, dataset names and roots. The CLI calls
:func:`check_config` after the overrides, so ``--dry-run`` reports the same errors a run would.
A recipe's own sections (``model``, ``dino``, ...) are checked by their ``check()`` method when
they define one, and every leaf named ``lr`` or ``*_lr`` must be a finite number > 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from sptrack.errors import ConfigError, suggestion
from sptrack.optim.entry import CLIP_ALGORITHMS, check_entry
from sptrack.recipe.config import DataConfig, EvalConfig, OptimizerEntry, RecipeConfig, TrackerConfig, TrainerConfig, flatten

#: Precision names Lightning 2.x accepts as strings (``lightning_fabric.connector``).
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")
#: Accelerator names Lightning resolves ("gpu" picks cuda or mps; "auto" the best available).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's bound
TRACKERS = ("none", "mlflow", "wandb")
#: "fsdp2" is sptrack's registered name for Lightning's ModelParallelStrategy.
STRATEGIES = ("auto", "ddp", "fsdp2")
#: Datasets of encoded images read from ``data.root``: a folder, a Hugging Face dataset on disk, tar shards.
DECODED_DATASETS = ("image_folder", "hf", "shards")
#: Of those, the ones read as streams (no random access: no subset or carved validation split).
STREAMED_DATASETS = ("shards",)
#: ``data.*`` keys that only those datasets read.
FOLDER_ONLY = ("root", "heldout_fraction", "image_size", "grayscale", "crop_from")
#: ``data.crop_from`` values (see DataConfig).
CROP_FROM = ("original", "resized")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: Domain of an optimizer entry's numeric fields (also the rules a search range must keep):
#: field -> (predicate, what the value must be).
OPTIMIZER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "frequency": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "weight_decay": (lambda v: v is None or (_is_number(v) and v >= 0), "a finite number >= 0 (or None: the optimizer's default)"),
    "momentum": (lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "in [0, 1]"),
    "warmup_fraction": (lambda v: v is None or (_is_number(v) and 0 <= v < 1), "in [0, 1)"),
    "gradient_clip_val": (lambda v: v is None or (_is_number(v) and v >= 0), "a finite number >= 0 (or None)"),
}


def rule_for(leaf: str) -> Optional[tuple[Callable[[Any], bool], str]]:
    """The domain rule of a config leaf name: the optimizer fields, and ``*_lr`` keys (e.g. ``probe_lr``)."""
    return OPTIMIZER_RULES.get(leaf) or (OPTIMIZER_RULES["lr"] if leaf.endswith("_lr") else None)


def integer(key: str, value: Any, low: int, fix: str, allowed: Iterable[Any] = ()) -> None:
    """``value`` must be an int >= ``low`` (or one of ``allowed``)."""
    if value in tuple(allowed) and not isinstance(value, bool):
        return
    if not _is_int(value) or value < low:
        extra = "".join(f" or {a!r}" for a in allowed)
        raise ConfigError(key, f"must be an integer >= {low}{extra}, got {value!r}.", fix)


def fraction(key: str, value: Any, fix: str, zero: bool = True) -> None:
    """``value`` must be a number in ``[0, 1)`` (``(0, 1)`` with ``zero=False``)."""
    if not _is_number(value) or not (0 <= value < 1 if zero else 0 < value < 1):
        raise ConfigError(key, f"must be a number in {'[' if zero else '('}0, 1), got {value!r}.", fix)


def probability(key: str, value: Any, fix: str) -> None:
    """``value`` must be a number in ``[0, 1]``."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(key, f"is a probability and must be in [0, 1], got {value!r}.", fix)


def non_negative(key: str, value: Any, fix: str) -> None:
    """``value`` must be a finite number >= 0."""
    if not _is_number(value) or value < 0:
        raise ConfigError(key, f"must be a finite number >= 0, got {value!r}.", fix)


def choice(key: str, value: Any, choices: Iterable[str], fix: str = "") -> None:
    """``value`` must be one of ``choices``; the error names the closest."""
    choices = tuple(choices)
    if value not in choices:
        hint = suggestion(str(value), choices) or f" Use one of {', '.join(choices)}."
        raise ConfigError(key, f"unknown value {value!r}.", (hint + " " + fix).strip())


def one_of(key: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` must be one of the few ``choices``, all named in the error (with the closest)."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}.", suggestion(str(value), choices))


def check_trainer(t: TrainerConfig) -> None:
    """Epochs, steps, accumulation, clipping, precision, accelerator, intervals, limits, seed, outputs."""
    integer("trainer.max_epochs", t.max_epochs, 1, "Use e.g. trainer.max_epochs=10 (-1 with trainer.max_steps for no epoch limit).",
            allowed=(-1,) if _is_int(t.max_steps) and t.max_steps >= 1 else ())
    integer("trainer.max_steps", t.max_steps, 1, "Use e.g. trainer.max_steps=1000, or -1 for no step limit.", allowed=(-1,))
    integer("trainer.accumulate_grad_batches", t.accumulate_grad_batches, 1, "Use 1 for no accumulation.")
    if t.gradient_clip_val is not None and not (_is_number(t.gradient_clip_val) and t.gradient_clip_val >= 0):
        raise ConfigError("trainer.gradient_clip_val", f"must be a finite number >= 0 or None, got {t.gradient_clip_val!r}.",
                          "Use e.g. trainer.gradient_clip_val=1.0, or None for no clipping.")
    choice("trainer.gradient_clip_algorithm", t.gradient_clip_algorithm, CLIP_ALGORITHMS)
    one_of("trainer.strategy", t.strategy, STRATEGIES)
    choice("trainer.precision", t.precision, PRECISIONS)
    choice("trainer.accelerator", t.accelerator, ACCELERATORS)
    integer("trainer.log_every_n_steps", t.log_every_n_steps, 1, "Use e.g. trainer.log_every_n_steps=10.")
    integer("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch, 1, "Use e.g. trainer.check_val_every_n_epoch=1.")
    for key, value, low in (("limit_train_batches", t.limit_train_batches, 1), ("limit_val_batches", t.limit_val_batches, 0)):
        as_count = _is_int(value) and value >= low
        as_fraction = isinstance(value, float) and (0 < value <= 1 or value == low)
        if value is not None and not (as_count or as_fraction):
            raise ConfigError(f"trainer.{key}", f"must be a batch count >= {low}, a fraction in (0, 1], or None; got {value!r}.",
                              f"Use e.g. trainer.{key}=0.5 or trainer.{key}=20.")
    integer("trainer.seed", t.seed, 0, f"Use a seed in [0, {MAX_SEED}].")
    if t.seed > MAX_SEED:
        raise ConfigError("trainer.seed", f"must be at most {MAX_SEED}, got {t.seed}.", "Use a smaller seed.")
    check_output_dir("trainer.output_dir", t.output_dir)
    steps, minutes, keep = t.checkpoint_every_n_steps, t.checkpoint_every_minutes, t.keep_checkpoints
    if steps is not None:
        integer("trainer.checkpoint_every_n_steps", steps, 1, "Use e.g. trainer.checkpoint_every_n_steps=500, or None for none.")
    if minutes is not None and not (_is_number(minutes) and minutes > 0):
        raise ConfigError("trainer.checkpoint_every_minutes", f"must be > 0 or None, got {minutes!r}.",
                          "Use e.g. trainer.checkpoint_every_minutes=30, or None for none.")
    integer("trainer.keep_checkpoints", keep, 1, "Use e.g. trainer.keep_checkpoints=3.")


def check_output_dir(key: str, value: Any) -> None:
    """A directory that exists, or can be created: its nearest existing parent is a writable directory."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a directory path, got {value!r}.", "Use e.g. trainer.output_dir=runs.")
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(key, f"{value!r} exists and is not a directory.", "Choose another trainer.output_dir.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create or write {value!r} ({parent} is not a writable directory).", "Choose another trainer.output_dir.")


def check_data(d: DataConfig) -> None:
    """Batch sizes, workers, subset, split seed, validation and held-out fractions, and the image folder's keys.

    The name is checked by :func:`check_dataset_name`: it must be a registered dataset when the
    recipe's own default is one (the recipe then builds its data through the registry); a recipe with
    data of its own (a name the registry does not know) is left to name its datasets as it likes.
    """
    integer("data.batch_size", d.batch_size, 1, "Use e.g. data.batch_size=256.")
    integer("data.val_batch_size", d.val_batch_size, 1, "Use e.g. data.val_batch_size=500.")
    integer("data.num_workers", d.num_workers, 0, "Use 0 to load in the main process.")
    if d.subset is not None:
        integer("data.subset", d.subset, 1, "Use e.g. data.subset=512, or None for the whole training split.")
    integer("data.split_seed", d.split_seed, 0, f"Use a seed in [0, {MAX_SEED}].")
    fraction("data.validation_fraction", d.validation_fraction, "Use e.g. data.validation_fraction=0.1, or 0 to evaluate on the held-out split.")
    fraction("data.heldout_fraction", d.heldout_fraction, "Use e.g. data.heldout_fraction=0.2.", zero=False)
    if d.image_size is not None:
        integer("data.image_size", d.image_size, 1, "Use e.g. data.image_size=64, or None for the recipe's input size.")
    choice("data.crop_from", d.crop_from, CROP_FROM)
    if d.dataset == "image_folder":
        check_image_root("data.root", d.root)
        return
    if d.dataset in DECODED_DATASETS:
        check_data_root(d.dataset, d.root)
        if d.dataset in STREAMED_DATASETS:
            for name, fix in (("subset", "Drop data.subset (write a smaller shard set instead)."),
                              ("validation_fraction", "Use 0: a shard set's splits are the ones make_shards wrote (its --heldout-fraction)."),
                              ("heldout_fraction", "Drop it: make_shards --heldout-fraction chose the split when it wrote the shards.")):
                if getattr(d, name) != DataConfig.__dataclass_fields__[name].default:
                    raise ConfigError(f"data.{name}", f"does not apply to data.dataset={d.dataset} (a stream is read, not indexed).", fix)
        return
    for name in FOLDER_ONLY:
        if getattr(d, name) != DataConfig.__dataclass_fields__[name].default:
            raise ConfigError(f"data.{name}", f"only applies to data.dataset={'|'.join(DECODED_DATASETS)}, not {d.dataset!r}.",
                              f"Drop data.{name}.")


def check_data_root(dataset: str, root: Any) -> None:
    """``data.root`` of an "hf" or "shards" dataset is given, and exists when it is a local path (shards may be a URL)."""
    what = {"hf": "a folder written by datasets' save_to_disk, or local parquet files",
            "shards": "the folder (or URL) of tar shards and their manifest.json (python -m sptrack.data.make_shards)"}[dataset]
    if not isinstance(root, str) or not root.strip():
        raise ConfigError("data.root", f"data.dataset={dataset} needs data.root.", f"Pass data.root=PATH: {what}.")
    if dataset == "shards" and "://" in root:
        return
    if not Path(root).expanduser().exists():
        raise ConfigError("data.root", f"{root!r} does not exist.", f"Pass {what}.")


def check_dataset_name(d: DataConfig, default_dataset: Optional[str] = None) -> None:
    """``data.dataset`` is registered when the recipe's default is (see :func:`check_data`; imports torch)."""
    from sptrack.data.registry import DATASETS

    if default_dataset is not None and default_dataset not in DATASETS:
        return
    if d.dataset not in DATASETS:
        hint = suggestion(str(d.dataset), DATASETS) or f" Registered: {', '.join(sorted(DATASETS))}."
        raise ConfigError("data.dataset", f"unknown dataset {d.dataset!r}.", hint)


def check_image_root(key: str, root: Any) -> None:
    """``root`` holds ``<class>/`` folders, or ``train/<class>/`` and ``val/<class>/``, each class with an image.

    Quick: each class folder is searched only up to its first image (the dataset lists them all later).
    """
    from sptrack.data.folder import IMAGE_SUFFIXES, SPLIT_DIRS, class_dirs, has_split_dirs, images_in

    layout = ("Lay the images out as ROOT/<class>/<image> (data.heldout_fraction of them are held out), "
              "or as ROOT/train/<class>/<image> and ROOT/val/<class>/<image>.")
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(key, "data.dataset=image_folder needs the folder of images.", f"Pass data.root=PATH. {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(key, f"{root!r} is not a directory.", f"Pass an existing folder. {layout}")
    for folder in [path / split for split in SPLIT_DIRS] if has_split_dirs(path, key) else [path]:
        classes = class_dirs(folder)
        if not classes:
            loose = any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir())
            problem = "holds images but no class sub-directories" if loose else "has no class sub-directories"
            raise ConfigError(key, f"{str(folder)!r} {problem}.", layout)
        for directory in classes:
            if next(images_in(directory), None) is None:
                raise ConfigError(key, f"class directory {str(directory)!r} holds no {'/'.join(IMAGE_SUFFIXES)} image.",
                                  "Remove the directory or add images to it.")


def check_tracker(t: TrackerConfig) -> None:
    """The tracker's kind, and optional strings; reachability is checked by the tracker itself before training."""
    one_of("tracker.kind", t.kind, TRACKERS)
    for name in ("uri", "experiment", "run_name"):
        value = getattr(t, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"tracker.{name}", f"must be a non-empty string or None, got {value!r}.")


def check_eval(e: EvalConfig) -> None:
    """The number of random-init encoders the baseline averages."""
    integer("eval.baseline_inits", e.baseline_inits, 1, "Use e.g. eval.baseline_inits=5.")


def check_optimizer_values(entry: OptimizerEntry, key: str) -> None:
    """An optimizer entry's shape (the Module's own torch-free checks) and the numeric domains a recipe adds."""
    check_entry(entry, lambda path: f"{key}.{path}")
    for field, (ok, must) in OPTIMIZER_RULES.items():
        value = getattr(entry, field)
        if not ok(value):
            raise ConfigError(f"{key}.{field}", f"must be {must}, got {value!r}.")
    if entry.betas is not None and not (len(entry.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in entry.betas)):
        raise ConfigError(f"{key}.betas", f"must be two numbers in [0, 1), got {entry.betas!r}.", "Write e.g. (0.9, 0.999).")


def check_optimizer_accepts(entry: OptimizerEntry, key: str) -> None:
    """Resolve ``entry`` as the Module will and build its optimizer on one dummy parameter: whatever
    the names, signatures or constructor refuse is an error naming the key of the value."""
    import torch

    from sptrack.optim.config import optimizer_config

    config = optimizer_config(key.rpartition(".")[2], entry, key)
    spec = config.optimizer
    if spec.cls is None:
        return  # a factory function: nothing to check before it is called
    try:
        spec.build([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError, IndexError) as err:
        given = {k: config.keys[f"optimizer.{k}"] for k in spec.kwargs if f"optimizer.{k}" in config.keys}
        named = next((where for k, where in given.items() if k in str(err)), config.key_of("optimizer"))
        raise ConfigError(named, f"{spec.cls.__name__} rejects {spec.kwargs}: {err}.", "Change the value.") from None


def check_config(cfg: RecipeConfig, default_dataset: Optional[str] = None) -> None:
    """Raise a :class:`ConfigError` naming the first key outside its domain (see the module docstring).

    Sections with a ``check()`` method run it; so does the config itself when the recipe gives it one.

    ``default_dataset``: the recipe's default ``data.dataset`` (see :func:`check_dataset_name`).
    """
    # Checks that need no torch first, so most mistakes are reported in a fraction of a second.
    check_trainer(cfg.trainer)
    check_tracker(cfg.tracker)
    check_eval(cfg.eval)
    check_data(cfg.data)
    entries = {f"optim.{name}": e for name, e in (cfg.optim or {}).items() if isinstance(e, OptimizerEntry)}
    for key, entry in entries.items():
        check_optimizer_values(entry, key)
    base = {"data", "trainer", "tracker", "eval", "optim", "search_space"}
    for name in vars(cfg):
        section = getattr(cfg, name)
        if name in base:
            continue
        if callable(getattr(section, "check", None)):
            section.check()
        _check_learning_rates(name, section)
    if callable(getattr(cfg, "check", None)):
        cfg.check()  # the recipe's own cross-section rules (e.g. an image size its patch size divides)
    check_dataset_name(cfg.data, default_dataset)
    for key, entry in entries.items():
        check_optimizer_accepts(entry, key)


def _check_learning_rates(prefix: str, section: Any) -> None:
    leaves = flatten(section, prefix + ".") if dataclasses.is_dataclass(section) or isinstance(section, dict) else {prefix: section}
    for key, value in leaves.items():
        leaf = key.rsplit(".", 1)[-1]
        if (leaf == "lr" or leaf.endswith("_lr")) and not OPTIMIZER_RULES["lr"][0](value):
            raise ConfigError(key, f"must be {OPTIMIZER_RULES['lr'][1]}, got {value!r}.")


#: Side of the images of the packaged datasets (an image folder's is ``data.image_size`` or the recipe's input size).
NATIVE_SIZES = {"mnist5k": 28, "digits": 8}


def check_patch_divides(data: DataConfig, input_size: int, patch_size: int, patch_key: str) -> None:
    """The images' side (a folder's ``data.image_size``, else the recipe's ``input_size``; a packaged dataset's own
    size) must be a multiple of the ViT's ``patch_size``: evaluation embeds whole images, so another size would fail
    at the first validation."""
    if data.dataset in DECODED_DATASETS:
        size, key = (data.image_size if data.image_size is not None else input_size), "data.image_size"
    elif data.dataset in NATIVE_SIZES:
        size, key = NATIVE_SIZES[data.dataset], "data.dataset"
    else:
        return
    if isinstance(size, int) and isinstance(patch_size, int) and patch_size > 0 and size % patch_size:
        if key == "data.dataset":
            raise ConfigError(key, f"{data.dataset}'s {size}-px images are not a multiple of {patch_key}={patch_size}.",
                              "Use data.dataset=image_folder data.root=PATH for real-size images, or a patch size that divides "
                              f"{size}.")
        lower = max(patch_size, size // patch_size * patch_size)
        raise ConfigError(key, f"{size} is not a multiple of {patch_key}={patch_size}.",
                          f"Use e.g. data.image_size={lower} or {lower + patch_size}.")
