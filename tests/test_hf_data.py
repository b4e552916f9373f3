"""``sptrack.data.hf``: Hugging Face ``datasets`` images (save_to_disk folders, local parquet) as dict samples."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from sptrack.data.base import split_indices  # noqa: E402
from sptrack.data.decode import decode_image  # noqa: E402
from sptrack.data.hf import HFImages, hf_dataset  # noqa: E402
from sptrack.errors import ConfigError  # noqa: E402

NAMES = ["cat", "dog", "emu"]
PER_CLASS = 12
H, W = 16, 20


def _encoded(seed: int, n_per_class: int) -> tuple[list[bytes], list[int]]:
    """Random-noise RGB images, PNG and JPEG in turn (so both decoders are exercised), class by class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(NAMES)):
        for k in range(n_per_class):
            buf = io.BytesIO()
            PILImage.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, format="PNG" if k % 2 else "JPEG")
            images.append(buf.getvalue())
            labels.append(label)
    return images, labels


def _table(images: list[bytes], labels: list, label_feature=None) -> Dataset:
    features = Features({"image": Image(), "label": label_feature or ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels}, features=features)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The encoded images and labels, saved as a single Dataset, a DatasetDict and parquet."""
    root = tmp_path_factory.mktemp("hf")
    train_images, train_labels = _encoded(0, PER_CLASS)
    val_images, val_labels = _encoded(1, 2)
    test_images, test_labels = _encoded(2, 1)
    train, val, test = _table(train_images, train_labels), _table(val_images, val_labels), _table(test_images, test_labels)
    train.save_to_disk(str(root / "single"))
    DatasetDict({"train": train, "validation": val, "test": test}).save_to_disk(str(root / "dict"))
    DatasetDict({"train": train}).save_to_disk(str(root / "train_only"))
    train.to_parquet(str(root / "one.parquet"))
    (root / "pq").mkdir()
    train.to_parquet(str(root / "pq" / "train-00000-of-00001.parquet"))
    test.to_parquet(str(root / "pq" / "test-00000-of-00001.parquet"))
    return {"root": root, "train": (train_images, train_labels), "val": (val_images, val_labels),
            "test": (test_images, test_labels), "cache": root / "cache"}


def _assert_pixels(ds: HFImages, images: list[bytes], labels: list[int], rows=None) -> None:
    """Sample ``i`` of ``ds`` is source row ``rows[i]``: exactly decode_image's pixels, and its label."""
    rows = range(len(images)) if rows is None else rows
    assert len(ds) == len(rows)
    for i, row in enumerate(rows):
        expected = decode_image(images[row], ds.grayscale, ds.decoder, ds.size)
        assert torch.equal(ds.load_uint8(i), expected)
        assert int(ds.targets[i]) == labels[row]
    assert ds.targets.dtype == torch.int64


def test_pixels_labels_and_sample_format(data):
    images, labels = data["train"]
    ds = hf_dataset("all", root=data["root"] / "single")
    assert ds.classes == NAMES and ds.num_classes == 3 and ds.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    assert ds.channels == 3 and ds.decoder in ("pillow", "simplejpeg")
    _assert_pixels(ds, images, labels)
    sample = ds[5]
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert torch.equal(sample["image"], decode_image(images[5], decoder=ds.decoder).float() / 255)
    assert sample["label"].dtype == torch.int64 and int(sample["label"]) == 0
    assert sample["index"].dtype == torch.int64 and int(sample["index"]) == 5
    assert torch.equal(ds.load(7), ds.load_uint8(7).float() / 255)
    assert repr(ds) == "HFImages(image_column='image', label_column='label', n=36, classes=3, size=None)"


def test_decode_options_follow_decode_image(data):
    images, labels = data["train"]
    gray = hf_dataset("all", root=data["root"] / "single", grayscale=True, size=(8, 10), decoder="pillow")
    assert gray.channels == 1 and gray.decoder == "pillow" and gray.size == (8, 10)
    assert gray.load_uint8(0).shape == (1, 8, 10)
    _assert_pixels(gray, images, labels)
    assert hf_dataset("all", root=data["root"] / "single", size=12).load(3).shape == (3, 12, 12)


def test_datasetdict_splits(data):
    root = data["root"] / "dict"
    train, val, every = (hf_dataset(s, root=root) for s in ("train", "val", "all"))
    _assert_pixels(train, *data["train"])
    _assert_pixels(every, *data["train"])  # "all" is the train split, whole
    _assert_pixels(val, *data["val"])  # "validation" wins over "test"
    assert val.classes == train.classes == NAMES
    _assert_pixels(hf_dataset("val", root=root, heldout_split="test"), *data["test"])
    # Another split as train: "all" follows it, and the validation split still is "val".
    _assert_pixels(hf_dataset("all", root=root, train_split="test"), *data["test"])
    _assert_pixels(hf_dataset("val", root=root, train_split="test"), *data["val"])


@pytest.mark.parametrize("name", ["single", "train_only"])
def test_carved_split_follows_split_indices(data, name):
    images, labels = data["train"]
    root = data["root"] / name
    train, val = hf_dataset("train", root=root, seed=3), hf_dataset("val", root=root, seed=3)
    n_val = round(0.2 * len(images))  # 7 of 36
    val_rows = split_indices(np.array(labels), n_val, "val", 3)
    train_rows = split_indices(np.array(labels), n_val, "train", 3)
    _assert_pixels(val, images, labels, val_rows)
    _assert_pixels(train, images, labels, train_rows)
    assert set(val_rows).isdisjoint(train_rows) and sorted([*val_rows, *train_rows]) == list(range(36))
    # Stratified: 7 * 12/36 = 2.33 per class; the one left over goes to the lowest class on a tie.
    assert np.bincount(val.targets.numpy(), minlength=3).tolist() == [3, 2, 2]
    assert [int(val[i]["index"]) for i in range(len(val))] == list(range(n_val))
    other = hf_dataset("val", root=root, seed=4, heldout_fraction=0.5)
    assert list(split_indices(np.array(labels), 18, "val", 4)) != list(val_rows) and len(other) == 18
    _assert_pixels(other, images, labels, split_indices(np.array(labels), 18, "val", 4))


def test_parquet_file_and_folder(data):
    images, labels = data["train"]
    one = data["root"] / "one.parquet"
    every = hf_dataset("all", root=one, cache_dir=data["cache"])
    assert every.classes == NAMES  # the ClassLabel survives in parquet's schema metadata
    _assert_pixels(every, images, labels)
    _assert_pixels(hf_dataset("val", root=one, cache_dir=data["cache"]), images, labels,
                   split_indices(np.array(labels), 7, "val", 0))
    # A folder's train-*/test-* file names are its splits, as on the hub: test is "val", not mixed into train.
    folder = data["root"] / "pq"
    _assert_pixels(hf_dataset("train", root=folder, cache_dir=data["cache"]), images, labels)
    _assert_pixels(hf_dataset("val", root=folder, cache_dir=data["cache"]), *data["test"])


def test_reading_is_offline_and_restores_the_environment(data, monkeypatch):
    import huggingface_hub.constants as hub_constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    seen = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append((os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"),
                     datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    assert len(hf_dataset("all", root=data["root"] / "one.parquet", cache_dir=data["cache"])) == 36
    assert seen == [("1", "1", True, True, "parquet")]
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    assert datasets.config.HF_HUB_OFFLINE is False and hub_constants.HF_HUB_OFFLINE is False


def test_plain_labels_are_sorted_values_numbered_by_train(tmp_path):
    images, labels = _encoded(5, 2)
    words = ["zebra", "ant", "moth"]
    train = _table(images, [words[c] for c in labels], Value("string"))
    # The held-out split lacks "ant": it must still number "moth"/"zebra" as train does.
    val = _table(images[2:4] + images[4:5], ["moth", "moth", "zebra"], Value("string"))
    DatasetDict({"train": train, "val": val}).save_to_disk(str(tmp_path / "words"))
    tr, va = hf_dataset("train", root=tmp_path / "words"), hf_dataset("val", root=tmp_path / "words")
    assert tr.classes == ["ant", "moth", "zebra"] and va.classes == tr.classes
    assert tr.targets.tolist() == [2, 2, 0, 0, 1, 1] and va.targets.tolist() == [1, 1, 2]
    assert tr.label_values == ["ant", "moth", "zebra"]
    # Integers sort as numbers, not as text.
    ints = HFImages(_table(images, [10, 10, 9, 9, 100, 100], Value("int64")))
    assert ints.classes == ["9", "10", "100"] and ints.targets.tolist() == [1, 1, 0, 0, 2, 2]


def test_binary_and_path_image_columns(tmp_path):
    images, labels = _encoded(6, 2)
    paths = []
    for i, data in enumerate(images):
        path = tmp_path / f"{i}.img"
        path.write_bytes(data)
        paths.append(str(path))
    blob = HFImages(Dataset.from_dict({"png": images, "y": labels}), image_column="png", label_column="y")
    by_path = HFImages(Dataset.from_dict({"file": paths, "y": labels}), image_column="file", label_column="y")
    on_disk = HFImages(Dataset.from_dict({"image": [{"bytes": None, "path": p} for p in paths], "label": labels},
                                         features=Features({"image": Image(), "label": ClassLabel(names=NAMES)})))
    for ds in (blob, by_path, on_disk):
        _assert_pixels(ds, images, labels)


def test_select(data):
    images, labels = data["train"]
    ds = hf_dataset("all", root=data["root"] / "single")
    picked = ds.select([30, 0, 30, 13])
    assert picked.classes == NAMES and picked.num_classes == 3
    _assert_pixels(picked, images, labels, [30, 0, 30, 13])
    assert [int(picked[i]["index"]) for i in range(4)] == [0, 1, 2, 3]
    _assert_pixels(picked.select([3, 0]), images, labels, [13, 30])  # selections compose
    assert len(ds) == 36  # the original is untouched


def test_pickles_light_and_loader_workers_match(data):
    images, _ = data["train"]
    ds = hf_dataset("train", root=data["root"] / "single")  # a carved, selected split
    blob = pickle.dumps(ds)
    # The memory-mapped table goes by its file path: no image's bytes travel to a worker.
    assert not any(image in blob for image in images)
    assert len(blob) < sum(map(len, images)) / 4
    back = pickle.loads(blob)
    assert len(back) == len(ds) and torch.equal(back.targets, ds.targets)
    assert all(torch.equal(back.load_uint8(i), ds.load_uint8(i)) for i in (0, 9, len(ds) - 1))

    def batches(workers):
        return list(DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert a["image"].shape[1:] == (3, H, W)
        assert all(torch.equal(a[k], b[k]) for k in ("image", "label", "index"))
    assert torch.cat([b["index"] for b in parallel]).tolist() == list(range(len(ds)))


def _config_error(match=None, **kwargs) -> ConfigError:
    split = kwargs.pop("split", "train")
    with pytest.raises(ConfigError, match=match) as info:
        hf_dataset(split, **kwargs)
    return info.value


def test_config_errors(data, tmp_path):
    root = data["root"]
    assert _config_error().key == "hf.root"
    assert _config_error(match="does not exist", root=tmp_path / "nope").key == "hf.root"
    (tmp_path / "empty").mkdir()
    assert _config_error(match="neither a save_to_disk", root=tmp_path / "empty").key == "hf.root"
    assert _config_error(match="Did you mean 'image'", root=root / "single", image_column="imgae").key == "hf.image_column"
    assert _config_error(match="Did you mean 'label'", root=root / "single", label_column="lable").key == "hf.label_column"
    assert _config_error(match="not images", root=root / "single", image_column="label").key == "hf.image_column"
    assert _config_error(match="Did you mean 'train'", root=root / "dict", train_split="trian").key == "hf.split"
    err = _config_error(match="Did you mean 'validation'", root=root / "dict", split="val", heldout_split="valdation")
    assert err.key == "hf.split"
    assert _config_error(match="single Dataset", root=root / "single", split="val", heldout_split="test").key == "hf.split"
    assert _config_error(root=root / "single", split="val", heldout_fraction=1.5).key == "hf.heldout_fraction"
    assert _config_error(root=root / "single", size=0).key == "hf.size"
    assert _config_error(root=root / "single", decoder="turbo").key == "hf.decoder"
    assert _config_error(match="unknown split", root=root / "single", split="tets").key == "split"


def test_label_config_errors(tmp_path):
    images, labels = _encoded(7, 1)
    _table(images, [0, -1, 2]).save_to_disk(str(tmp_path / "unlabelled"))
    assert _config_error(match="no class", root=tmp_path / "unlabelled").key == "hf.label_column"
    _table(images, ["a", None, "b"], Value("string")).save_to_disk(str(tmp_path / "nulls"))
    assert _config_error(match="missing", root=tmp_path / "nulls").key == "hf.label_column"
    words = DatasetDict({"train": _table(images, ["a", "b", "b"], Value("string")),
                         "validation": _table(images, ["a", "c", "d"], Value("string"))})
    words.save_to_disk(str(tmp_path / "unseen"))
    assert _config_error(match="'c', 'd'", root=tmp_path / "unseen", split="val").key == "hf.label_column"
    other = ClassLabel(names=["cat", "dog", "fox"])
    DatasetDict({"train": _table(images, labels), "validation": _table(images, labels, other)}).save_to_disk(
        str(tmp_path / "names"))
    assert _config_error(match="class names", root=tmp_path / "names", split="val").key == "hf.label_column"
    # A single hf_dataset("train") of the same roots does not read the held-out split at all.
    assert hf_dataset("train", root=tmp_path / "names").classes == NAMES


def test_missing_datasets_library(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    err = _config_error(root=data["root"] / "single")
    assert err.key == "data.dataset" and "pip install 'sptrack[hf]'" in str(err)


def test_importing_the_module_leaves_datasets_unloaded():
    code = "import sys, sptrack.data, sptrack.data.hf; assert 'datasets' not in sys.modules, 'datasets was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
