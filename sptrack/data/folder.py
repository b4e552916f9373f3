"""``ImageFolder``: a ``root/<class>/<image>`` tree of PNG/JPEG files as dict samples."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from sptrack.data.decode import DECODERS
from sptrack.data.encoded import EncodedImages
from sptrack.errors import ConfigError

__all__ = ["DECODERS", "IMAGE_SUFFIXES", "SPLIT_DIRS", "ImageFolder", "class_dirs", "has_split_dirs", "images_in"]
#: File suffixes (compared lower-case) that count as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Sub-directories that, when a root holds both, are its train and held-out splits.
SPLIT_DIRS = ("train", "val")
_KEY = "image_folder.root"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class ImageFolder(EncodedImages):
    """Images under ``root/<class_name>/`` (searched recursively), labelled by sorted class name.

    ``dataset[i]`` is ``{"image": (C, H, W) float32 in [0, 1], "label": int64, "index": int64}``
    (the image is the uint8 pixels with ``dtype=torch.uint8``: a quarter of the bytes through the
    worker queues and to the device, made float there).
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
        dtype: ``torch.float32`` (in [0, 1]) or ``torch.uint8`` (the decoded pixels) images.

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
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(size, grayscale, gpu_transform, decoder, dtype, key="image_folder")
        self.root = Path(root)
        self.classes, self.samples = _scan(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def encoded(self, i: int) -> bytes:
        """The bytes of image file ``i``."""
        return self.samples[i][0].read_bytes()

    def _take(self, rows: list[int]) -> None:
        self.samples = [self.samples[i] for i in rows]

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, n={len(self)}, classes={self.num_classes}, size={self.size})"


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
