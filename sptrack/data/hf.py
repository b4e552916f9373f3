"""Hugging Face ``datasets`` images as dict samples: a ``save_to_disk`` folder or local parquet, never a hub download.

:class:`HFImages` wraps a ``datasets.Dataset`` with the interface of
:class:`~sptrack.data.folder.ImageFolder`; :func:`hf_dataset` is its registry factory (train / val /
all splits from a ``DatasetDict``, or a held-out share carved like ``image_folder``'s). ``datasets``
is an optional dependency (the ``[hf]`` extra) imported only when one of them is used, so
``import sptrack.data`` stays light.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from sptrack.data.base import check_split, split_indices
from sptrack.data.encoded import EncodedImages
from sptrack.errors import ConfigError, suggestion

__all__ = ["HELDOUT_SPLITS", "HFImages", "hf_dataset"]

#: Splits of a ``DatasetDict`` taken, first one present wins, as "val" when ``heldout_split`` is not given.
HELDOUT_SPLITS = ("validation", "val", "test")
_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
# The marker files ``save_to_disk`` writes: a DatasetDict's, then a single Dataset's.
_DISK_MARKERS = ("dataset_dict.json", "state.json")


def _datasets():
    """The ``datasets`` module, or the ConfigError saying how to install it."""
    try:
        import datasets
    except ImportError as err:
        raise ConfigError("data.dataset", "the 'hf' dataset needs the Hugging Face 'datasets' library, which is not installed.",
                          "pip install 'sptrack[hf]'") from err
    return datasets


class HFImages(EncodedImages):
    """The images and labels of a ``datasets.Dataset``, as :class:`~sptrack.data.folder.ImageFolder` serves them.

    ``dataset[i]`` is ``{"image": (C, H, W) float32 in [0, 1], "label": int64, "index": int64}``.
    Images are decoded when a sample is read, by :func:`~sptrack.data.decode.decode_image`, from
    the encoded bytes: an ``Image()`` column is read with ``Image(decode=False)`` (so ``datasets``
    never builds a PIL image) and a cell without bytes is read from its ``path``; a ``binary``
    column holds the encoded bytes and a ``string`` column file paths (relative ones resolve
    against the working directory).

    Labels: when the label column is a ``ClassLabel``, its values are the class indices and its
    names the ``classes``. Otherwise the column's distinct values, sorted (numbers numerically,
    strings lexically), are the classes: the ``k``-th smallest value is class ``k`` and
    ``classes[k]`` is ``str(value)`` (``label_values`` holds the values themselves).

    The state is light: the memory-mapped Arrow table of a dataset read from disk pickles as its
    file path, and besides it only the labels and row numbers are held, so DataLoader workers
    start cheaply. (A dataset built in memory, e.g. by ``Dataset.from_dict``, pickles whole.)

    Args:
        dataset: the ``datasets.Dataset`` (any indices mapping from ``select``/``shuffle`` is kept).
        image_column: the column holding the images.
        label_column: the column holding the labels.
        size: resize every image to ``size×size`` (int) or ``(height, width)``, bilinear. With
            None images keep their size, and batching needs them all to have the same one.
        grayscale: decode to 1 channel ("L") instead of 3 ("RGB").
        gpu_transform: optional batch-level transform applied by ``sptrack.Module`` on the device.
        decoder: JPEG decoder: "auto" (simplejpeg when installed, else Pillow), "pillow" or
            "simplejpeg". Other formats are always read by Pillow.
        dtype: ``torch.float32`` (in [0, 1]) or ``torch.uint8`` (the decoded pixels) images.
        label_values: for a label column that is not a ``ClassLabel``, the label values in class
            order (default: the column's sorted distinct values). Give a held-out split the
            train split's so that both number the classes alike.

    Raises:
        ConfigError: ``hf.image_column`` / ``hf.label_column`` when the column is missing (with
            close matches) or of a type that cannot be read; ``hf.label_column`` when labels are
            missing (null, or ClassLabel's -1) or not in ``label_values``; ``hf.size`` /
            ``hf.decoder`` for bad values; ``data.dataset`` when ``datasets`` is not installed.
    """

    def __init__(
        self,
        dataset: Any,
        image_column: str = "image",
        label_column: str = "label",
        size: Optional[Union[int, tuple[int, int]]] = None,
        grayscale: bool = False,
        gpu_transform: Optional[Callable[[dict], dict]] = None,
        decoder: str = "auto",
        label_values: Optional[Sequence[Any]] = None,
        dtype: torch.dtype = torch.float32,
    ):
        datasets = _datasets()
        super().__init__(size, grayscale, gpu_transform, decoder, dtype, key="hf")
        self.image_column = image_column
        self.label_column = label_column
        columns = list(dataset.column_names)
        for key, name, role in (("hf.image_column", image_column, "image"), ("hf.label_column", label_column, "label")):
            if name not in columns:
                raise ConfigError(key, f"the dataset has no {role} column {name!r}.",
                                  suggestion(name, columns) or f" Its columns: {', '.join(columns)}.")
        self._kind = _image_kind(datasets, dataset.features[image_column], image_column)
        images = dataset.select_columns([image_column])
        if self._kind == "image":
            # decode=False: the cell is {"bytes", "path"}; decode_image then does the work, with our decoder and size.
            images = images.cast_column(image_column, datasets.Image(decode=False))
        self._images = images.with_format(None)
        self.classes, self.label_values, targets = _labels(datasets, dataset, label_column, label_values)
        self.targets = torch.from_numpy(targets)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        # Row of ``_images`` for each sample: ``select`` narrows this, never the Arrow table.
        self._rows = np.arange(len(dataset), dtype=np.int64)

    def encoded(self, i: int) -> bytes:
        """The encoded (PNG/JPEG/...) bytes of image ``i``, as stored or read from its path."""
        cell = self._images[int(self._rows[i])][self.image_column]
        if cell is None:
            raise ValueError(f"image {i} is missing (null) in column {self.image_column!r}.")
        if self._kind == "image":
            # An Image() cell holds the file's bytes, or (for files left outside the table) only its path.
            cell = cell["bytes"] if cell.get("bytes") is not None else cell["path"]
            return Path(cell).read_bytes() if isinstance(cell, str) else cell
        return Path(cell).read_bytes() if self._kind == "path" else cell

    def _take(self, rows: list[int]) -> None:
        self._rows = self._rows[np.asarray(rows, dtype=np.int64)]

    def __repr__(self) -> str:
        return (f"HFImages(image_column={self.image_column!r}, label_column={self.label_column!r}, n={len(self)}, "
                f"classes={self.num_classes}, size={self.size})")


def _image_kind(datasets, feature, column: str) -> str:
    """How the column stores images: "image" (an ``Image()`` feature), "bytes" (encoded) or "path" (file names)."""
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return "bytes"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "path"
    raise ConfigError("hf.image_column", f"column {column!r} holds {feature!r}, not images.",
                      "Name a column of type Image(), binary (encoded image files) or string (image paths).")


def _labels(datasets, dataset, column: str, label_values: Optional[Sequence[Any]]):
    """``(classes, label_values, int64 targets)`` of the label column (see :class:`HFImages` for the rule)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = dataset.features[column]
    # The arrow format honours an indices mapping (select/shuffle), which the raw table would not.
    values = dataset.select_columns([column]).with_format("arrow")[:].column(column)
    if values.null_count:
        raise ConfigError("hf.label_column", f"column {column!r} has {values.null_count} missing (null) labels.",
                          "Drop those rows, or fill the labels in.")
    if isinstance(feature, datasets.ClassLabel):
        targets = values.to_numpy().astype(np.int64)
        bad = int(((targets < 0) | (targets >= feature.num_classes)).sum())
        if bad:
            raise ConfigError("hf.label_column", f"{bad} rows of the ClassLabel column {column!r} have no class "
                              f"(-1, as in unlabelled test splits, or outside 0..{feature.num_classes - 1}).",
                              "Use a labelled split (hf.heldout_split), or drop those rows.")
        return list(feature.names), None, targets
    if not isinstance(feature, datasets.Value) or not (pa.types.is_integer(values.type) or pa.types.is_string(values.type)
                                                       or pa.types.is_large_string(values.type) or pa.types.is_boolean(values.type)):
        raise ConfigError("hf.label_column", f"column {column!r} holds {feature!r}; labels must be a ClassLabel, "
                          "integers, booleans or strings.", "Name the label column.")
    if label_values is None:
        uniques = pc.unique(values)
        uniques = uniques.take(pc.sort_indices(uniques))
    else:
        try:
            uniques = pa.array(list(label_values), type=values.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise ConfigError("hf.label_column", f"the labels of column {column!r} ({values.type}) are not of the "
                              "train split's kind.", "Give both splits the same label type.") from err
    index = pc.index_in(values, value_set=uniques)
    if index.null_count:
        unknown = pc.unique(pc.filter(values, pc.is_null(index))).to_pylist()
        raise ConfigError("hf.label_column", f"column {column!r} has labels the train split lacks: "
                          f"{', '.join(map(repr, unknown[:5]))}{', ...' if len(unknown) > 5 else ''}.",
                          "Give the splits the same classes.")
    kept = uniques.to_pylist()
    return [str(v) for v in kept], kept, index.to_numpy().astype(np.int64)


@contextlib.contextmanager
def _offline(datasets) -> Iterator[None]:
    """Forbid hub access for the duration: the environment and the flags ``datasets`` read at import."""
    import huggingface_hub.constants as hub_constants

    saved_env = {name: os.environ.get(name) for name in _OFFLINE_ENV}
    saved = (datasets.config.HF_HUB_OFFLINE, getattr(datasets.config, "HF_DATASETS_OFFLINE", None),
             hub_constants.HF_HUB_OFFLINE)
    os.environ.update({name: "1" for name in _OFFLINE_ENV})
    # The env vars alone are not enough: both libraries copy them into module constants when imported.
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load(root: Path, cache_dir: Optional[Union[str, Path]]):
    """The ``Dataset`` or ``DatasetDict`` at ``root`` (a ``save_to_disk`` folder, a .parquet file or a folder of them)."""
    datasets = _datasets()
    layout = ("Expected a folder written by Dataset/DatasetDict.save_to_disk, a .parquet file, "
              "or a folder of .parquet files.")
    if not root.exists():
        raise ConfigError("hf.root", f"{str(root)!r} does not exist.", f"Check the path. {layout}")
    cache = None if cache_dir is None else str(cache_dir)
    with _offline(datasets):
        if root.is_dir() and any((root / marker).is_file() for marker in _DISK_MARKERS):
            return datasets.load_from_disk(str(root), keep_in_memory=False)
        if root.is_file() and root.suffix.lower() == ".parquet":
            return datasets.load_dataset("parquet", data_files=str(root), cache_dir=cache)
        if root.is_dir() and next(root.rglob("*.parquet"), None) is not None:
            # data_dir, not one list of files: datasets then splits train-*/test-*/validation-* (or such
            # sub-folders) as the hub does, instead of mixing a test split into train.
            return datasets.load_dataset("parquet", data_dir=str(root), cache_dir=cache)
    raise ConfigError("hf.root", f"{str(root)!r} is neither a save_to_disk folder nor parquet data.", layout)


def _split(splits, name: str, role: str):
    """``splits[name]``, or a ConfigError (key ``hf.split``) with close matches among the split names."""
    if name not in splits:
        names = list(splits)
        raise ConfigError("hf.split", f"the dataset has no {role} split {name!r}.",
                          suggestion(name, names) or f" Its splits: {', '.join(names)}.")
    return splits[name]


def hf_dataset(split: str, root: Optional[Union[str, Path]] = None, seed: int = 0, heldout_fraction: float = 0.2,
               image_column: str = "image", label_column: str = "label", train_split: str = "train",
               heldout_split: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = None,
               **kwargs: Any) -> HFImages:
    """Local Hugging Face data as :class:`HFImages`: the registry factory, read like ``image_folder``.

    ``root`` is a folder written by ``save_to_disk`` (a ``DatasetDict`` or a single ``Dataset``),
    a local ``.parquet`` file, or a folder of them (its file names ``train-*``, ``test-*``,
    ``validation-*``... give the splits, as on the hub; else it is all "train"). Nothing is ever
    downloaded: hub access is switched off while it is read.

    "train" is the ``train_split``; "all" is that same split, whole. "val" is ``heldout_split``
    when given, else the first of :data:`HELDOUT_SPLITS` present; without either (or for a single
    ``Dataset``) it is ``heldout_fraction`` of the train split (at least one image;
    class-stratified, drawn with ``seed``, see :func:`~sptrack.data.base.split_indices`) and
    "train" the rest. A held-out split of its own numbers its classes as the train split does.

    Args:
        cache_dir: where ``datasets`` writes the Arrow copy of parquet data (default its own
            cache, ``~/.cache/huggingface/datasets``); unused for ``save_to_disk`` folders.
        kwargs: ``size``, ``grayscale``, ``gpu_transform``, ``decoder`` (see :class:`HFImages`).

    Raises:
        ConfigError: ``hf.root`` (missing, unreadable, or too few images to hold some out),
            ``hf.split`` (a split that is not there, with close matches), ``hf.image_column`` /
            ``hf.label_column`` (see :class:`HFImages`), ``hf.heldout_fraction``, ``split``, and
            ``data.dataset`` when ``datasets`` is not installed.
    """
    check_split(split)
    if root is None:
        raise ConfigError("hf.root", "the 'hf' dataset needs a root.",
                          "Pass root='path/to/save_to_disk/folder' or a .parquet file or folder.")
    datasets = _datasets()
    root = Path(root)
    loaded = _load(root, cache_dir)
    columns = {"image_column": image_column, "label_column": label_column}
    heldout = None
    if isinstance(loaded, datasets.DatasetDict):
        train = _split(loaded, train_split, "train")
        if heldout_split is not None:
            heldout = _split(loaded, heldout_split, "held-out")
        else:
            heldout = next((loaded[name] for name in HELDOUT_SPLITS if name in loaded and name != train_split), None)
    else:
        train = loaded
        if heldout_split is not None:
            raise ConfigError("hf.split", f"{str(root)!r} holds a single Dataset, so it has no split {heldout_split!r}.",
                              "Leave heldout_split unset to hold out heldout_fraction of it, or save a DatasetDict.")
    if split == "all" or (split == "train" and heldout is not None):
        return HFImages(train, **columns, **kwargs)
    if heldout is not None:
        reference = HFImages(train, **columns, **kwargs)
        if reference.label_values is None and not isinstance(heldout.features.get(label_column), datasets.ClassLabel):
            # ClassLabel train labels, plain held-out ones: their numbers would not mean the same classes.
            raise ConfigError("hf.label_column", f"{label_column!r} is a ClassLabel in the train split but not in the held-out one.",
                              "Give both splits the same label feature.")
        val = HFImages(heldout, **columns, **kwargs, label_values=reference.label_values)
        if val.classes != reference.classes:
            raise ConfigError("hf.label_column", f"the class names of the train and held-out splits differ "
                              f"({reference.classes} vs {val.classes}).", "Give both splits the same ClassLabel names.")
        return val
    fraction = heldout_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError("hf.heldout_fraction", f"must be a number in (0, 1), got {fraction!r}.", "Use e.g. 0.2.")
    images = HFImages(train, **columns, **kwargs)
    if len(images) < 2:
        raise ConfigError("hf.root", f"{str(root)!r} holds {len(images)} image; a held-out split needs at least 2.",
                          "Add images.")
    n_val = min(max(1, round(fraction * len(images))), len(images) - 1)
    return images.select(split_indices(images.targets.numpy(), n_val, split, seed))
