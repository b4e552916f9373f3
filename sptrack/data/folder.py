"""``ImageFolder``: a ``root/<class>/<image>`` tree of PNG/JPEG files as dict samples."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from sptrack.errors import ConfigError

#: ``ImageFolder(decoder=...)``: "auto" takes simplejpeg for JPEG files when it is installed, else Pillow.
DECODERS = ("auto", "pillow", "simplejpeg")
#: File suffixes (compared lower-case) that count as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Sub-directories that, when a root holds both, are its train and held-out splits.
SPLIT_DIRS = ("train", "val")
_KEY = "image_folder.root"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class ImageFolder(Dataset):
    """Images under ``root/<class_name>/`` (searched recursively), labelled by sorted class name.

    ``dataset[i]`` is ``{"image": (C, H, W) float32 in [0, 1], "label": int64, "index": int64}``.
    Class indices follow the sorted directory names (``classes``, ``class_to_idx``); hidden entries
    are ignored. Files are decoded when a sample is read (so workers share the work).

    Args:
        root: the directory holding one sub-directory per class.
        size: resize every image to ``size×size`` (int) or ``(height, width)``, bilinear. With
            None images keep their size, and batching needs them all to have the same one.
        grayscale: decode to 1 channel ("L") instead of 3 ("RGB").
        gpu_transform: optional batch-level transform applied by ``sptrack.Module`` on the device.
        decoder: JPEG decoder: "auto" (simplejpeg when installed, the ``[fast]`` extra; else Pillow),
            "pillow" or "simplejpeg". PNG files are always read by Pillow.

    Raises:
        ConfigError (key ``image_folder.root``): the root is missing or not a directory, has no
            class sub-directories, or a class directory holds no .png/.jpg/.jpeg file.
    """

    def __init__(
        self,
        root: Union[str, Path],
        size: Optional[Union[int, tuple[int, int]]] = None,
        grayscale: bool = False,
        gpu_transform: Optional[Callable[[dict], dict]] = None,
        decoder: str = "auto",
    ):
        if decoder not in DECODERS:
            raise ConfigError("image_folder.decoder", f"unknown decoder {decoder!r}.", f"Use one of {DECODERS}.")
        if decoder == "simplejpeg" and not _has_simplejpeg():
            raise ConfigError("image_folder.decoder", "simplejpeg is not installed.", "pip install simplejpeg, or use decoder='pillow'.")
        self.root = Path(root)
        self.size = _parse_size(size)
        self.grayscale = bool(grayscale)
        if decoder == "auto":
            decoder = "simplejpeg" if _has_simplejpeg() else "pillow"
        self.decoder = decoder
        self.gpu_transform = gpu_transform
        self.classes, self.samples = _scan(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        """Number of classes (class sub-directories)."""
        return len(self.classes)

    def load(self, i: int) -> torch.Tensor:
        """Decode image ``i`` to a ``(C, H, W)`` float32 tensor in [0, 1] (resized if ``size`` is set)."""
        from PIL import Image  # imported here: only folder datasets need Pillow

        path = self.samples[i][0]
        if self.decoder == "simplejpeg" and path.suffix.lower() in (".jpg", ".jpeg"):
            import simplejpeg

            # libjpeg-turbo without Pillow's per-image overhead (bench/loader.py: 1.2x Pillow's decode rate).
            decoded = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY" if self.grayscale else "RGB")
            img = Image.fromarray(decoded[:, :, 0] if self.grayscale else decoded)
        else:
            with Image.open(path) as opened:
                img = opened.convert("L" if self.grayscale else "RGB")
        if self.size is not None:
            height, width = self.size
            img = img.resize((width, height), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.load(i), "label": self.targets[i], "index": torch.tensor(i, dtype=torch.int64)}

    @property
    def channels(self) -> int:
        """Channels of every decoded image: 1 with ``grayscale``, else 3."""
        return 1 if self.grayscale else 3

    def select(self, rows) -> "ImageFolder":
        """A copy holding only the samples ``rows``, in that order (same classes; ``index`` counts from 0 again)."""
        rows = [int(i) for i in rows]
        out = copy.copy(self)
        out.samples = [self.samples[i] for i in rows]
        out.targets = self.targets[torch.tensor(rows, dtype=torch.int64)]
        return out

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, n={len(self)}, classes={self.num_classes}, size={self.size})"


def _has_simplejpeg() -> bool:
    import importlib.util

    return importlib.util.find_spec("simplejpeg") is not None


def has_split_dirs(root: Union[str, Path], key: str = _KEY) -> bool:
    """Whether ``root`` holds both ``train/`` and ``val/`` (its splits), rather than ``<class>/`` folders to split.

    Raises:
        ConfigError (key ``key``): only one of them exists (the other would be read as a class), or
            their class sub-directories differ (labels follow the sorted names, so they would not match).
    """
    root = Path(root)
    present = [name for name in SPLIT_DIRS if (root / name).is_dir()]
    if len(present) == 1:
        missing = next(name for name in SPLIT_DIRS if name not in present)
        raise ConfigError(key, f"{str(root)!r} has a {present[0]!r} but no {missing!r} sub-directory.",
                          f"Add ROOT/{missing}/<class>/<image>, or lay the images out as ROOT/<class>/<image> "
                          "(without train/val) to hold out data.heldout_fraction of them.")
    if not present:
        return False
    train, val = ({d.name for d in class_dirs(root / name)} for name in SPLIT_DIRS)
    if train != val:
        only = "; ".join(f"only in {name}/: {', '.join(sorted(names))}" for name, names in (("train", train - val), ("val", val - train)) if names)
        raise ConfigError(key, f"the class folders of {str(root / 'train')!r} and {str(root / 'val')!r} differ ({only}).",
                          "Give both splits the same class folders.")
    return True


def _parse_size(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ConfigError("image_folder.size", f"must be a positive int or (height, width), got {size!r}.")


def class_dirs(root: Path) -> list[Path]:
    """The class sub-directories of ``root`` (hidden ones left out), sorted by name."""
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def images_in(directory: Path) -> Iterator[Path]:
    """The image files under ``directory``, recursively, leaving out hidden files and hidden directories."""
    return (p for p in directory.rglob("*") if _is_image(p) and not _hidden_below(p, directory))


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and ``(path, label)`` pairs, or a ConfigError explaining what is wrong."""
    layout = "Expected root/<class_name>/<image>.png|jpg|jpeg."
    if not root.exists():
        raise ConfigError(_KEY, f"{str(root)!r} does not exist.", f"Check the path. {layout}")
    if not root.is_dir():
        raise ConfigError(_KEY, f"{str(root)!r} is not a directory.", layout)
    classes = class_dirs(root)
    if not classes:
        loose = any(_is_image(p) for p in root.iterdir())
        problem = "holds images but no class sub-directories." if loose else "has no class sub-directories."
        raise ConfigError(_KEY, f"{str(root)!r} {problem}", layout)
    samples: list[tuple[Path, int]] = []
    for label, directory in enumerate(classes):
        files = sorted(images_in(directory))
        if not files:
            raise ConfigError(
                _KEY,
                f"class directory {directory.name!r} in {str(root)!r} has no {'/'.join(IMAGE_SUFFIXES)} images.",
                "Remove the directory or add images to it.",
            )
        samples.extend((p, label) for p in files)
    return [d.name for d in classes], samples


def _hidden_below(path: Path, top: Path) -> bool:
    """Whether a directory between ``top`` and ``path`` is hidden (e.g. ``.ipynb_checkpoints``)."""
    return any(part.startswith(".") for part in path.relative_to(top).parts[:-1])
