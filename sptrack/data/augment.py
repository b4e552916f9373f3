"""Vectorised per-sample image augmentations on batches (B, C, H, W) with values in [0, 1].

Every function takes per-row parameter tensors of length B, so one call augments a whole batch
with different random parameters per image and no Python loop over samples. Random parameters are
drawn by :func:`sample_view_params` on the CPU (they are a few numbers per image, and a CPU
``torch.Generator`` gives the same stream on every device), then moved to the images' device.

All views of one output size are cropped, flipped and resized by a single ``grid_sample`` call;
blur, jitter and solarization then work on the flat ``(views * B, C, h, w)`` stack, touching only
the images they were drawn for where that is cheaper.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

# Tries per image when drawing a crop box, as in torchvision's RandomResizedCrop.
_CROP_TRIES = 10

#: Columns of a settings table (one row per view, see :func:`sample_view_params`).
SETTINGS = (
    "scale_lo", "scale_hi", "ratio_lo", "ratio_hi", "flip_p", "jitter_p",
    "brightness", "contrast", "blur_p", "sigma_lo", "sigma_hi", "solarize_p",
)  # fmt: skip
_S = {name: i for i, name in enumerate(SETTINGS)}
#: Fields of :class:`ViewParams`, in column order.
PARAMS = ("box_w", "box_h", "center_x", "center_y", "flip", "sigma", "brightness", "contrast", "solarize")


class ViewParams:
    """Per-image random parameters of a batch of views: one row per image, one column per field.

    Fields (each a length-N tensor): ``box_w``/``box_h``, the crop's width/height as fractions of
    the image; ``center_x``/``center_y``, its centre in normalised coordinates (-1 = left/top edge,
    1 = right/bottom edge); ``flip``, 1 to mirror horizontally; ``sigma``, the blur std in output
    pixels (0 = no blur); ``brightness``/``contrast``, multiplicative factors (1 = unchanged);
    ``solarize``, 1 to solarize. Kept as one ``(N, 9)`` tensor so that moving or reordering costs
    one op, not nine (per-op overhead dominates at these sizes).
    """

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in PARAMS:
            return self.table[:, PARAMS.index(name)]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.table)

    def image_major_to_view_major(self, b: int, copies: int) -> "ViewParams":
        """Reorder rows from image-major (``B * copies``) to view-major (``copies * B``)."""
        return ViewParams(self.table.view(b, copies, -1).transpose(0, 1).reshape(b * copies, -1))

    def to(self, device: torch.device, dtype: torch.dtype) -> "ViewParams":
        """The same parameters on ``device`` as ``dtype``."""
        return ViewParams(self.table.to(device=device, dtype=dtype, non_blocking=True))


def sample_view_params(settings: torch.Tensor, aspect: float, generator: Optional[torch.Generator] = None) -> ViewParams:
    """Draw one set of parameters per row of ``settings``, an ``(N, len(SETTINGS))`` float table.

    Settings columns (:data:`SETTINGS`): crop area fraction range ``scale_lo/scale_hi``, crop
    width/height aspect range ``ratio_lo/ratio_hi``, probabilities ``flip_p``, ``jitter_p``,
    ``blur_p``, ``solarize_p``, jitter strengths ``brightness``/``contrast`` (factor ~ U(1 ± s)),
    blur std range ``sigma_lo/sigma_hi``. ``aspect`` is the input's H / W.

    Crop boxes follow torchvision's RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~
    U(log ratio); of ``_CROP_TRIES`` candidates the first that fits in the image is kept, and when
    none fits the first is shrunk to fit. Unlike torchvision, boxes are continuous (sub-pixel). All
    uniforms come from one ``torch.rand`` call, so a seeded ``generator`` reproduces them exactly.
    """
    # The few numbers per view are worked out in numpy: at these sizes torch's per-op overhead
    # dominated (1 ms per 12-view sample in a loader worker, against 0.1 ms now).
    table = settings.numpy() if isinstance(settings, torch.Tensor) else np.asarray(settings, dtype=np.float32)
    col = lambda name: table[:, _S[name]]  # noqa: E731
    n, t = len(table), _CROP_TRIES
    u = torch.rand(n, 2 * t + 9, generator=generator).numpy()
    area = col("scale_lo")[:, None] + (col("scale_hi") - col("scale_lo"))[:, None] * u[:, :t]
    log_lo, log_hi = np.log(col("ratio_lo")), np.log(col("ratio_hi"))
    ratio = np.exp(log_lo[:, None] + (log_hi - log_lo)[:, None] * u[:, t : 2 * t])
    # Area fraction s of an H×W image at aspect r: width sqrt(s*r*H/W)*W, height sqrt(s/r*W/H)*H.
    box_w = np.sqrt(area * ratio * np.float32(aspect))
    box_h = np.sqrt(area / ratio / np.float32(aspect))
    fits = (box_w <= 1.0) & (box_h <= 1.0)
    # argmax of a bool row is its first True, and 0 (the first candidate) when there is none.
    first = fits.argmax(1)[:, None]
    box_w = np.minimum(np.take_along_axis(box_w, first, 1)[:, 0], 1.0)
    box_h = np.minimum(np.take_along_axis(box_h, first, 1)[:, 0], 1.0)
    v = u[:, 2 * t :]
    # Centre anywhere that keeps the box inside the image.
    center_x = (2 * v[:, 0] - 1) * (1 - box_w)
    center_y = (2 * v[:, 1] - 1) * (1 - box_h)
    flip = v[:, 2] < col("flip_p")
    # Images that skip jitter keep factor 1, so one arithmetic pass serves the whole batch.
    jitter = v[:, 3] < col("jitter_p")
    brightness = np.maximum(1 + jitter * col("brightness") * (2 * v[:, 4] - 1), 0)
    contrast = np.maximum(1 + jitter * col("contrast") * (2 * v[:, 5] - 1), 0)
    blur = v[:, 6] < col("blur_p")
    sigma = blur * (col("sigma_lo") + (col("sigma_hi") - col("sigma_lo")) * v[:, 7])
    solarize = v[:, 8] < col("solarize_p")
    columns = (box_w, box_h, center_x, center_y, flip, sigma, brightness, contrast, solarize)
    return ViewParams(torch.from_numpy(np.stack(columns, 1).astype(np.float32)))


def crop_resize(images: torch.Tensor, copies: int, params: ViewParams, out_size: tuple[int, int]) -> torch.Tensor:
    """``copies`` cropped, flipped and bilinearly resized views of each image, in one ``grid_sample``.

    ``images`` is (B, C, H, W); ``params`` has ``B * copies`` rows ordered image-major (image 0's
    views, then image 1's, ...). Returns ``(copies, B, C, out_h, out_w)``, contiguous.

    Output pixel ``(i, j)`` of a view samples normalised position ``(cx + w * ±u_j, cy + h * u_i)``
    with ``u_k = (2k+1)/out - 1`` (``align_corners=False`` geometry, border padding), so a full-image
    box at the input size is the identity up to float rounding. The views of one image are stacked
    along the grid's height, which lets ``grid_sample`` read the batch as is instead of a
    ``copies``-fold repeated copy. There is no antialiasing: fine for multi-crop recipes, whose
    crops are at most ~1.5x larger than their output, but resize large images beforehand.
    """
    b, c = images.shape[:2]
    out_h, out_w = out_size
    dtype, device = images.dtype, images.device
    u_w = (2 * torch.arange(out_w, device=device, dtype=dtype) + 1) / out_w - 1
    u_h = (2 * torch.arange(out_h, device=device, dtype=dtype) + 1) / out_h - 1
    sign = 1 - 2 * params.flip  # -1 mirrors the view horizontally about its centre
    grid_x = params.center_x[:, None] + (params.box_w * sign)[:, None] * u_w  # (B * copies, out_w)
    grid_y = params.center_y[:, None] + params.box_h[:, None] * u_h  # (B * copies, out_h)
    grid = torch.stack(
        (grid_x.view(b, copies, 1, out_w).expand(b, copies, out_h, out_w),
         grid_y.view(b, copies, out_h, 1).expand(b, copies, out_h, out_w)),
        dim=-1,
    ).view(b, copies * out_h, out_w, 2)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # (B, C, copies * out_h, out_w) -> view-major (copies, B, C, out_h, out_w), one copy.
    return views.view(b, c, copies, out_h, out_w).permute(2, 0, 1, 3, 4).contiguous()


def gaussian_matrix(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image ``(N, size, size)`` Gaussian blur matrices, rows renormalised at the borders.

    Renormalising (rather than zero or reflect padding) keeps borders from darkening and needs no
    kernel-size choice. The exponent is clipped so that tiny sigmas do not make denormals (slow on
    CPUs).
    """
    d = torch.arange(size, device=sigma.device, dtype=sigma.dtype)
    half_d2 = (d[:, None] - d[None, :]) ** 2 / 2
    weights = (half_d2 * (-1 / sigma**2)[:, None, None]).clamp_(min=-80.0).exp_()
    return weights.div_(weights.sum(-1, keepdim=True))


def gaussian_blur(views: torch.Tensor, sigma: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Blur the images ``chosen`` (int64 indices) with their own ``sigma`` (N,), in place.

    A separable blur as two small batched matmuls, ``G @ x @ G^T``; only the chosen images are
    touched, since blurs are applied to a fraction of the views.
    """
    if len(chosen) == 0:
        return views
    _, _, h, w = views.shape
    s = sigma.index_select(0, chosen)
    g_h = gaussian_matrix(h, s)[:, None]
    g_w = g_h if h == w else gaussian_matrix(w, s)[:, None]
    part = views.index_select(0, chosen)
    views.index_copy_(0, chosen, torch.matmul(torch.matmul(g_h, part), g_w.transpose(-1, -2)))
    return views


def color_jitter(views: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Per-image brightness then contrast, torchvision-style, clipped to [0, 1]; views are (N, C, H, W).

    Brightness multiplies; contrast blends with the image's mean gray level (ITU-R 601 luma for 3
    channels, the plain mean otherwise). Factors of 1 leave an image unchanged (up to the clip).
    Works in place on ``views`` and returns it.
    """
    x = views.mul_(brightness[:, None, None, None]).clamp_(0, 1)
    if x.shape[1] == 3:
        luma = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        mean = (x * luma[None, :, None, None]).sum(1).mean((1, 2))
    else:
        mean = x.mean((1, 2, 3))
    c = contrast[:, None, None, None]
    return x.mul_(c).add_((1 - c) * mean[:, None, None, None]).clamp_(0, 1)


def solarize(views: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert pixels ``>= threshold`` of the images whose ``mask`` is 1, in place; views are (N, C, H, W).

    Only the selected images are touched (solarization is rare, so this is far cheaper than a
    masked pass over the whole batch).
    """
    chosen = (mask > 0).nonzero().squeeze(1)
    if len(chosen):
        part = views.index_select(0, chosen)
        views.index_copy_(0, chosen, torch.where(part >= threshold, 1 - part, part))
    return views
