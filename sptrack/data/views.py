"""``MultiCropViews``: DINO-style multi-crop view generation on a collated batch, as an nn.Module."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from sptrack.data.augment import SETTINGS, color_jitter, crop_resize, gaussian_blur, sample_view_params, solarize
from sptrack.data.decode import to_float
from sptrack.errors import ConfigError

#: Key of the uint8 crops cut in the loader workers (see sptrack.data.crops).
CROPS_KEY = "crops"
Size = Union[int, tuple[int, int]]
Prob = Union[float, Sequence[float]]


@dataclass(frozen=True)
class ViewSpec:
    """The recipe of one view; every random choice is drawn independently per image.

    Args:
        size: output side (int) or ``(height, width)``.
        scale: range of the crop's area as a fraction of the image (RandomResizedCrop ``scale``).
        ratio: range of the crop's width/height aspect, drawn log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of colour jitter; when applied, brightness and contrast factors are
            drawn from ``[1 - s, 1 + s]`` with ``s`` = ``brightness`` / ``contrast``.
        brightness: brightness jitter strength (0 = off).
        contrast: contrast jitter strength (0 = off).
        blur_p: probability of a Gaussian blur with std ~ U(``blur_sigma``) in output pixels.
        blur_sigma: range of the blur std, in output pixels.
        solarize_p: probability of solarization (pixels >= the threshold become ``1 - x``).
    """

    size: Size
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    solarize_p: float = 0.0

    @property
    def out_size(self) -> tuple[int, int]:
        """``(height, width)`` of the view."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    def check(self, key: str) -> None:
        """Raise a ConfigError naming ``key.<field>`` for the first invalid field."""
        size = self.size if isinstance(self.size, (tuple, list)) else (self.size, self.size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise ConfigError(f"{key}.size", f"must be a positive int or (height, width), got {self.size!r}.")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"{key}.scale", f"must satisfy 0 < low <= high <= 1, got {self.scale!r}.")
        lo, hi = self.ratio
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"{key}.ratio", f"must satisfy 0 < low <= high, got {self.ratio!r}.")
        lo, hi = self.blur_sigma
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"{key}.blur_sigma", f"must satisfy 0 < low <= high, got {self.blur_sigma!r}.")
        for name in ("flip_p", "jitter_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{key}.{name}", f"is a probability and must be in [0, 1], got {value!r}.")
        for name in ("brightness", "contrast"):
            value = getattr(self, name)
            if not 0 <= value:
                raise ConfigError(f"{key}.{name}", f"must be >= 0, got {value!r}.")


def settings_table(specs: Sequence[ViewSpec]) -> torch.Tensor:
    """The ``(views, len(SETTINGS))`` table of sampled settings, one row per view."""
    rows = [
        (
            s.scale[0], s.scale[1], s.ratio[0], s.ratio[1], s.flip_p, s.jitter_p,
            s.brightness, s.contrast, s.blur_p, s.blur_sigma[0], s.blur_sigma[1], s.solarize_p,
        )  # fmt: skip
        for s in specs
    ]
    return torch.tensor(rows, dtype=torch.float32)


def _per_view(value: Prob, i: int, key: str) -> float:
    """Global view ``i``'s value of a scalar-or-sequence option (sequences cycle)."""
    if isinstance(value, (int, float)):
        return float(value)
    values = list(value)
    if not values:
        raise ConfigError(key, "must be a number or a non-empty sequence of numbers.")
    return float(values[i % len(values)])


class MultiCropViews(nn.Module):
    """Make ``n_global`` large and ``n_local`` small augmented views of every image in a batch.

    Use it as a dataset's ``gpu_transform``: ``sptrack.Module`` applies it to the collated,
    device-side batch, and ``forward(batch, stage)`` then finds ``batch["views"]``, a list of
    ``n_global`` tensors ``(B, C, global_size, global_size)`` followed by ``n_local`` tensors
    ``(B, C, local_size, local_size)``, all in [0, 1]. Other keys ("image", "label", "index", ...)
    are passed through unchanged (the input dict itself is not modified).

    Each view is, per image: a random resized crop (area ``scale``, aspect ``ratio``, bilinear, no
    antialiasing), a horizontal flip, a Gaussian blur, brightness/contrast jitter and solarization,
    each with its own probability. Blur comes before jitter (DINO/torchvision blur after it; the
    orders only differ where jitter clips to [0, 1]). Everything is vectorised over the batch: the
    views of one output size come from a single ``grid_sample`` call, and random parameters differ
    per image and per view.

    The defaults suit 28×28 MNIST and follow DINO's asymmetric recipe: ``blur_p`` and
    ``solarize_p`` may be sequences giving the value of global view 1, 2, ... (cycled when there are
    more views), so the default ``blur_p=(1.0, 0.1)`` always blurs view 1 and rarely view 2, and
    ``solarize_p=(0.0, 0.2)`` solarizes only view 2. For any other per-view recipe build
    :class:`ViewSpec` s and use :meth:`from_specs`.

    Randomness: with ``seed`` (or a CPU ``generator``) the views are a deterministic function of the
    batch sequence; with neither, torch's global RNG is used (so ``seed_everything`` governs it).
    Parameters are drawn on the CPU whatever the images' device, so a seed gives the same views on
    every device. The generator state is not part of ``state_dict``.

    Args:
        global_size, local_size: output side of global / local views (int or (height, width)).
        n_global, n_local: number of global (>= 1) and local (>= 0) views.
        global_scale, local_scale: crop-area ranges of global / local views.
        ratio: crop aspect-ratio range for all views.
        flip_p, jitter_p, brightness, contrast, blur_sigma: as in :class:`ViewSpec`, for all views.
        blur_p, solarize_p: global views' blur / solarize probabilities (number or per-view sequence).
        local_blur_p, local_solarize_p: the same for every local view.
        solarize_threshold: pixels at or above it are inverted when solarizing.
        seed: seed of a private CPU generator.
        generator: a CPU ``torch.Generator`` to draw from instead (not with ``seed``).
        image_key, views_key: batch keys read and written.
    """

    def __init__(
        self,
        global_size: Size = 28,
        local_size: Size = 12,
        n_global: int = 2,
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        blur_p: Prob = (1.0, 0.1),
        local_blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        solarize_p: Prob = (0.0, 0.2),
        local_solarize_p: float = 0.0,
        solarize_threshold: float = 0.5,
        *,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        image_key: str = "image",
        views_key: str = "views",
    ):
        super().__init__()
        for key, value, low in (("n_global", n_global, 1), ("n_local", n_local, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"multicrop.{key}", f"must be an integer >= {low}, got {value!r}.")
        shared = dict(ratio=tuple(ratio), flip_p=flip_p, jitter_p=jitter_p, brightness=brightness, contrast=contrast)
        shared["blur_sigma"] = tuple(blur_sigma)
        specs = [
            ViewSpec(
                size=global_size,
                scale=tuple(global_scale),
                blur_p=_per_view(blur_p, i, "multicrop.blur_p"),
                solarize_p=_per_view(solarize_p, i, "multicrop.solarize_p"),
                **shared,
            )
            for i in range(n_global)
        ]
        specs += [
            ViewSpec(size=local_size, scale=tuple(local_scale), blur_p=local_blur_p, solarize_p=local_solarize_p, **shared)
            for _ in range(n_local)
        ]
        self._setup(specs, n_global, solarize_threshold, seed, generator, image_key, views_key)

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[ViewSpec],
        n_global: Optional[int] = None,
        solarize_threshold: float = 0.5,
        *,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        image_key: str = "image",
        views_key: str = "views",
    ) -> "MultiCropViews":
        """Views made exactly as ``specs`` say, in that order.

        ``n_global`` only records how many leading views are "global" (``self.n_global``, for the
        method's loss); by default, the views sharing the first view's size.
        """
        specs = list(specs)
        if not specs or not all(isinstance(s, ViewSpec) for s in specs):
            raise ConfigError("multicrop.specs", "must be a non-empty sequence of ViewSpec.")
        if n_global is None:
            n_global = next((i for i, s in enumerate(specs) if s.out_size != specs[0].out_size), len(specs))
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(specs, n_global, solarize_threshold, seed, generator, image_key, views_key)
        return self

    def _setup(self, specs, n_global, threshold, seed, generator, image_key, views_key) -> None:
        for i, spec in enumerate(specs):
            spec.check(f"multicrop.views[{i}]")
        if seed is not None and generator is not None:
            raise ConfigError("multicrop.seed", "give either seed or generator, not both.")
        if generator is not None and generator.device.type != "cpu":
            raise ConfigError("multicrop.generator", "must be a CPU torch.Generator (parameters are drawn on the CPU).")
        self.specs = list(specs)
        self.n_global = int(n_global)
        self.n_local = len(self.specs) - self.n_global
        self.solarize_threshold = float(threshold)
        self.image_key, self.views_key = image_key, views_key
        self.generator = generator
        if seed is not None:
            self.manual_seed(seed)
        # Views of one output size are made together; remember which positions each group fills.
        self._groups: list[tuple[tuple[int, int], list[int], torch.Tensor]] = []
        for size in dict.fromkeys(s.out_size for s in self.specs):
            positions = [i for i, s in enumerate(self.specs) if s.out_size == size]
            self._groups.append((size, positions, settings_table([self.specs[i] for i in positions])))
        # Whether any view of a size group can jitter / solarize: skipped passes would be no-ops.
        jitter, solar = SETTINGS.index("jitter_p"), SETTINGS.index("solarize_p")
        self._group_uses = {
            size: (bool((table[:, jitter] > 0).any()), bool((table[:, solar] > 0).any())) for size, _, table in self._groups
        }

    def manual_seed(self, seed: int) -> "MultiCropViews":
        """(Re)start the private generator from ``seed``; returns self."""
        self.generator = torch.Generator().manual_seed(int(seed))
        return self

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The list of views of a ``(B, C, H, W)`` float batch in [0, 1] (global views first)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"MultiCropViews expects a float (B, C, H, W) image batch in [0, 1], got {shape}.")
        b, _, h, w = images.shape
        out: list[Optional[torch.Tensor]] = [None] * len(self.specs)
        for size, positions, settings in self._groups:
            copies = len(positions)
            # Image-major rows (image 0's views, image 1's, ...), what crop_resize expects.
            params = sample_view_params(settings.repeat(b, 1), aspect=h / w, generator=self.generator).to(images.device, images.dtype)
            made = crop_resize(images, copies, params, size)  # (copies, B, C, h, w)
            self._photometric(made, params.image_major_to_view_major(b, copies), size)
            for position, view in zip(positions, made.unbind(0)):
                out[position] = view
        return out

    def views_from_crops(self, crops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The views of crops already cut and resized (by :class:`~sptrack.data.crops.WorkerCrops`).

        ``crops`` holds one ``(B, C, h, w)`` batch per spec (uint8, or float in [0, 1]), in spec
        order; each gets the photometric half of its view (blur, jitter, solarize) exactly as
        :meth:`views` applies it. Parameters are drawn as in :meth:`views` (box and flip draws are
        then unused: the workers drew their own).
        """
        if len(crops) != len(self.specs):
            raise ValueError(f"MultiCropViews has {len(self.specs)} views but the batch has {len(crops)} crops.")
        out: list[Optional[torch.Tensor]] = [None] * len(self.specs)
        for size, positions, settings in self._groups:
            group = [crops[i] for i in positions]
            if any(tuple(c.shape[-2:]) != size for c in group):
                raise ValueError(f"crops of views {positions} should be {size}, got {[tuple(c.shape[-2:]) for c in group]}.")
            made = to_float(torch.stack(group)).contiguous()  # (copies, B, C, h, w)
            copies, b = made.shape[:2]
            params = sample_view_params(settings.repeat(b, 1), aspect=1.0, generator=self.generator).to(made.device, made.dtype)
            self._photometric(made, params.image_major_to_view_major(b, copies), size)
            for position, view in zip(positions, made.unbind(0)):
                out[position] = view
        return out

    def _photometric(self, made: torch.Tensor, params, size: tuple[int, int]) -> None:
        """Blur, jitter and solarize the ``(copies, B, C, h, w)`` views of one size in place (``params`` view-major)."""
        flat = made.view(made.shape[0] * made.shape[1], *made.shape[2:])
        gaussian_blur(flat, params.sigma, (params.sigma > 0).nonzero().squeeze(1))
        if self._group_uses[size][0]:
            color_jitter(flat, params.brightness, params.contrast)
        if self._group_uses[size][1]:
            solarize(flat, params.solarize, self.solarize_threshold)

    def forward(self, batch: Union[dict, torch.Tensor]) -> Any:
        """A copy of ``batch`` with ``batch[views_key]`` added; a plain tensor gives the list of views.

        A batch with ``"crops"`` (cut in the loader workers from the originals) gets the views of
        those crops; a uint8 ``batch[image_key]`` is turned into float in [0, 1] first.
        """
        if isinstance(batch, torch.Tensor):
            return self.views(to_float(batch))
        if self.image_key not in batch:
            raise KeyError(f"MultiCropViews reads batch[{self.image_key!r}], but the batch has keys {sorted(batch)}.")
        out = dict(batch)
        out[self.image_key] = to_float(batch[self.image_key])
        crops = out.pop(CROPS_KEY, None)
        out[self.views_key] = self.views(out[self.image_key]) if crops is None else self.views_from_crops(crops)
        return out

    def extra_repr(self) -> str:
        sizes = [s.out_size for s in self.specs]
        return f"n_global={self.n_global}, n_local={self.n_local}, sizes={sizes}"
