"""``build_dataset``: datasets by name, for configs and command lines."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from sptrack.data.base import SPLITS, check_split, split_indices
from sptrack.data.digits import Digits
from sptrack.data.folder import ImageFolder, has_split_dirs
from sptrack.data.hf import HFImages, hf_dataset
from sptrack.data.mnist import MNIST5k
from sptrack.data.synthetic import SyntheticImages
from sptrack.errors import ConfigError, suggestion, unknown_name_error

#: Default sizes of the "synthetic" dataset's splits.
SYNTHETIC_SIZES = {"train": 2000, "val": 500}
# Added to the seed of the synthetic "val" split so that it never repeats the train images.
_SYNTHETIC_VAL_SEED_OFFSET = 1_000_003


def _synthetic(split: str, n: int | None = None, seed: int = 0, **kwargs: Any) -> SyntheticImages:
    """Synthetic images: "train" (and "all") draw with ``seed``, "val" with a far-away seed."""
    if n is None:
        n = SYNTHETIC_SIZES.get(split, SYNTHETIC_SIZES["train"])
    return SyntheticImages(n, seed=seed + (_SYNTHETIC_VAL_SEED_OFFSET if split == "val" else 0), **kwargs)


def _image_folder(split: str, root: str | Path | None = None, seed: int = 0, heldout_fraction: float = 0.2,
                  **kwargs: Any) -> ImageFolder:
    """A folder of images in either layout, and ``root/<class>/...`` itself for "all".

    ``root/train/<class>/...`` and ``root/val/<class>/...`` when both exist: they are "train" and
    "val" (``seed`` and ``heldout_fraction`` play no part). Otherwise ``root/<class>/...``: "val" is
    ``heldout_fraction`` of its images (at least one; class-stratified, drawn with ``seed``, see
    :func:`~sptrack.data.base.split_indices`) and "train" the rest.
    """
    if root is None:
        raise ConfigError("dataset.root", "the 'image_folder' dataset needs a root directory.", "Pass root='path/to/images'.")
    root = Path(root)
    if split == "all":
        return ImageFolder(root, **kwargs)
    if has_split_dirs(root):
        return ImageFolder(root / split, **kwargs)
    fraction = heldout_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError("image_folder.heldout_fraction", f"must be a number in (0, 1), got {fraction!r}.", "Use e.g. 0.2.")
    folder = ImageFolder(root, **kwargs)
    if len(folder) < 2:
        raise ConfigError("image_folder.root", f"{str(root)!r} holds {len(folder)} image; a held-out split needs at least 2.",
                          "Add images.")
    n_val = min(max(1, round(fraction * len(folder))), len(folder) - 1)
    return folder.select(split_indices(folder.targets.numpy(), n_val, split, seed))


def _shards(split: str, root: str | Path | None = None, **kwargs: Any):
    """One split ("train" or "val") of a tar-shard set (see :class:`~sptrack.data.shards.ShardedImages`)."""
    from sptrack.data.shards import ShardedImages

    if root is None:
        raise ConfigError("dataset.root", "the 'shards' dataset needs the folder or URL of a shard set.", "Pass root='path/to/shards'.")
    if split == "all":
        raise ConfigError("split", "a shard set is read one split at a time.", "Use split='train' or 'val'.")
    return ShardedImages(root, split, **kwargs)


#: name -> factory(split, **kwargs). Extend with :func:`register_dataset`.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": lambda split, **kw: MNIST5k(split, **kw),
    "digits": lambda split, **kw: Digits(split, **kw),
    "image_folder": _image_folder,
    "hf": hf_dataset,
    "shards": _shards,
    "synthetic": _synthetic,
}
# The constructors whose keyword arguments each name accepts, for errors on misspelt options.
_OPTIONS: dict[str, tuple[Callable, ...]] = {
    "mnist5k": (MNIST5k,),
    "digits": (Digits,),
    "image_folder": (_image_folder, ImageFolder),
    "hf": (hf_dataset, HFImages),
    "synthetic": (_synthetic, SyntheticImages),
}
# Constructor arguments that the factories pass themselves, not options a config may set.
_INTERNAL = {"self", "split", "kwargs", "dataset", "label_values"}


def register_dataset(name: str, factory: Callable[..., Dataset]) -> None:
    """Make ``build_dataset(name, split, **kwargs)`` call ``factory(split, **kwargs)``."""
    if name in DATASETS:
        raise ConfigError("dataset", f"the name {name!r} is already registered.", "Pick another name.")
    DATASETS[name] = factory


def _accepted(name: str) -> set[str] | None:
    """Keyword names the dataset ``name`` accepts, or None when they cannot be known (``**kwargs``)."""
    if name not in _OPTIONS:
        return None
    accepted: set[str] = set()
    for fn in _OPTIONS[name]:
        params = inspect.signature(fn).parameters.values()
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return accepted - _INTERNAL


def build_dataset(name: str, split: str = "train", **kwargs: Any) -> Dataset:
    """The dataset ``name`` ("mnist5k", "digits", "image_folder", "hf", "synthetic") for ``split``.

    ``split`` is "train", "val" or "all". Keyword arguments go to the dataset (e.g. ``seed``,
    ``gpu_transform``; ``root``/``heldout_fraction``/``size``/``grayscale`` for "image_folder";
    ``n``/``channels``/``size``/``num_classes`` for "synthetic"). "image_folder" reads
    ``root/train/`` and ``root/val/`` when both exist, else holds out a seeded, stratified
    ``heldout_fraction`` of ``root/<class>/`` (see ``_image_folder``), and reads ``root`` itself for
    "all"; "hf" reads a Hugging Face ``save_to_disk`` folder or local parquet (see
    :func:`~sptrack.data.hf.hf_dataset`); "synthetic" draws the "val" split from a different seed than "train" (default sizes
    :data:`SYNTHETIC_SIZES`).

    Raises:
        ConfigError: unknown name (key ``dataset``, with close matches), unknown split (key
            ``split``) or unknown option (key ``dataset.<option>``).
    """
    if name not in DATASETS:
        raise unknown_name_error("dataset", "dataset", name, DATASETS)
    check_split(split)
    accepted = _accepted(name)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                hint = suggestion(key, accepted) or f" Options of {name!r}: {', '.join(sorted(accepted))}."
                raise ConfigError(f"dataset.{key}", f"is not an option of the {name!r} dataset.", hint)
    return DATASETS[name](split, **kwargs)


__all__ = ["DATASETS", "SPLITS", "build_dataset", "register_dataset"]
