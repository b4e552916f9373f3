"""Decoding image files to uint8 tensors: one function shared by every source of encoded images (folders, shards, tables)."""

from __future__ import annotations

import importlib.util
import io
from typing import Optional

import numpy as np
import torch

from sptrack.errors import ConfigError

#: ``decoder=``: "auto" takes simplejpeg for JPEG data when it is installed, else Pillow.
DECODERS = ("auto", "pillow", "simplejpeg")
_JPEG_SUFFIXES = (".jpg", ".jpeg")


def has_simplejpeg() -> bool:
    """Whether the optional simplejpeg decoder (the ``[fast]`` extra) is importable."""
    return importlib.util.find_spec("simplejpeg") is not None


def resolve_decoder(decoder: str, key: str = "image_folder.decoder") -> str:
    """"pillow" or "simplejpeg" for ``decoder`` ("auto" picks simplejpeg when installed), or a ConfigError naming ``key``."""
    if decoder not in DECODERS:
        raise ConfigError(key, f"unknown decoder {decoder!r}.", f"Use one of {DECODERS}.")
    if decoder == "simplejpeg" and not has_simplejpeg():
        raise ConfigError(key, "simplejpeg is not installed.", "pip install simplejpeg, or use decoder='pillow'.")
    if decoder == "auto":
        return "simplejpeg" if has_simplejpeg() else "pillow"
    return decoder


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with the JPEG start-of-image marker."""
    return data[:2] == b"\xff\xd8"


def decode_pil(data: bytes, grayscale: bool = False, decoder: str = "pillow"):
    """The Pillow image ("L" with ``grayscale``, else "RGB") of encoded image data.

    JPEG data goes to simplejpeg when ``decoder`` is "simplejpeg" (libjpeg-turbo without Pillow's
    per-image overhead: 1.2x Pillow's rate in bench/loader.py); everything else to Pillow.
    """
    from PIL import Image  # imported here: only sources of encoded images need Pillow

    if decoder == "simplejpeg" and is_jpeg(data):
        import simplejpeg

        decoded = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grayscale else "RGB")
        return Image.fromarray(decoded[:, :, 0] if grayscale else decoded)
    with Image.open(io.BytesIO(data)) as opened:
        return opened.convert("L" if grayscale else "RGB")


def pil_to_tensor(img) -> torch.Tensor:
    """A Pillow image's pixels as a ``(C, H, W)`` uint8 tensor (a copy)."""
    array = np.array(img, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_pil(image: torch.Tensor):
    """A ``(C, H, W)`` uint8 tensor (C = 1 or 3) as a Pillow image."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def decode_image(data: bytes, grayscale: bool = False, decoder: str = "pillow",
                 size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The ``(C, H, W)`` uint8 tensor of an encoded image (C = 1 with ``grayscale``, else 3; see :func:`decode_pil`).

    With ``size = (height, width)`` the image is resized to it, bilinear (Pillow's, antialiased).
    """
    from PIL import Image

    img = decode_pil(data, grayscale, decoder)
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return pil_to_tensor(img)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1] (other dtypes are returned as they are)."""
    return image.to(torch.float32).div_(255.0) if image.dtype == torch.uint8 else image
