"""Tar shard sets: make_shards (folder -> shards + manifest) and ShardedImages/ShardLoader (split over ranks and workers)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist.launch import clean_env, torchrun
from sptrack.data.decode import decode_image, to_float
from sptrack.data.folder import ImageFolder
from sptrack.data.make_shards import main, make_shards
from sptrack.data.registry import build_dataset
from sptrack.data.shards import FORMAT, ShardedImages, ShardLoader, round_robin_position
from sptrack.errors import ConfigError

WORKER = Path(__file__).parent / "dist" / "shards_worker.py"
CLASS_SIZES = {"ant": 14, "bee": 12, "cat": 9}  # 35 images: val 11 (round(0.31 * 35)), train 24
FRACTION, SEED = 0.31, 5


def write_images(folder: Path, sizes: dict, seed: int = 0) -> None:
    """``folder/<class>/<i>.png|jpg``: 20x16 random images, every third one a PNG."""
    rng = np.random.default_rng(seed)
    for name, n in sizes.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:02d}.{'png' if i % 3 == 0 else 'jpg'}")


def tar_samples(shards: Path, split: str) -> list[tuple[str, str, bytes, int]]:
    """``(key, image extension, image bytes, label)`` of every sample of ``split``, in manifest order."""
    manifest = json.loads((shards / "manifest.json").read_text())
    out = []
    for entry in manifest["splits"][split]:
        with tarfile.open(shards / entry["url"]) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.split(".")[0] for name in files})
        assert len(keys) == entry["count"]
        for key in keys:
            ext = "png" if f"{key}.png" in files else "jpg"
            out.append((key, ext, files[f"{key}.{ext}"], int(files[f"{key}.cls"])))
    return out


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """``(image folder, its shard set)``: 5 samples per shard, the val split held out with FRACTION, SEED."""
    base = tmp_path_factory.mktemp("shards")
    write_images(base / "images", CLASS_SIZES)
    make_shards(base / "images", base / "shards", shard_size=5, heldout_fraction=FRACTION, seed=SEED)
    return base / "images", base / "shards"


def batches(loader) -> list[dict]:
    return list(loader)


def index_lists(batch_list) -> list[list[int]]:
    return [b["index"].tolist() for b in batch_list]


# --- make_shards ----------------------------------------------------------------------------------


def test_manifest_lists_every_shard_with_its_count_and_the_classes(shard_set):
    _, shards = shard_set
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["classes"] == sorted(CLASS_SIZES)
    for split, n in (("train", 24), ("val", 11)):
        entries = manifest["splits"][split]
        assert [e["count"] for e in entries] == [5] * (n // 5) + ([n % 5] if n % 5 else [])
        assert [e["url"] for e in entries] == [f"{split}-{i:06d}.tar" for i in range(len(entries))]
    assert sorted(p.name for p in shards.iterdir()) == sorted(["manifest.json"] + [e["url"] for s in manifest["splits"].values() for e in s])
    assert not [p for p in shards.parent.iterdir() if p.name.startswith(".")]  # the temporary folder is gone


def test_shards_hold_the_image_folder_split_byte_for_byte(shard_set):
    images, shards = shard_set
    for split in ("train", "val"):
        folder = build_dataset("image_folder", split, root=images, seed=SEED, heldout_fraction=FRACTION)
        expected = [(p.read_bytes(), label, "png" if p.suffix == ".png" else "jpg") for p, label in folder.samples]
        stored = tar_samples(shards, split)
        assert [key for key, *_ in stored] == [f"{i:06d}" for i in range(len(stored))]  # key = position in the split
        assert sorted((data, label, ext) for _, ext, data, label in stored) == sorted(expected)
        if split == "val":  # in folder order
            assert [(data, label, ext) for _, ext, data, label in stored] == expected
    train_labels = [label for *_, label in tar_samples(shards, "train")]
    assert train_labels != sorted(train_labels)  # shuffled: the shards mix the classes


def test_train_and_val_folders_are_the_splits(tmp_path):
    write_images(tmp_path / "in" / "train", {"x": 4, "y": 3}, seed=1)
    write_images(tmp_path / "in" / "val", {"x": 2, "y": 2}, seed=2)
    manifest = make_shards(tmp_path / "in", tmp_path / "out", shard_size=3)
    assert manifest["classes"] == ["x", "y"]
    assert [e["count"] for e in manifest["splits"]["train"]] == [3, 3, 1]
    val = ImageFolder(tmp_path / "in" / "val")
    assert [(d, y) for _, _, d, y in tar_samples(tmp_path / "out", "val")] == [(p.read_bytes(), y) for p, y in val.samples]


def test_bad_inputs_raise_config_errors_and_write_nothing(tmp_path, shard_set, capsys):
    images, _ = shard_set
    cases = [(dict(root=tmp_path / "missing"), "root"), (dict(shard_size=0), "shard_size"),
             (dict(heldout_fraction=1.5), "heldout_fraction"), (dict(heldout_fraction=0), "heldout_fraction")]
    for kwargs, key in cases:
        with pytest.raises(ConfigError) as err:
            make_shards(**{"root": images, "out": tmp_path / "out", **kwargs})
        assert err.value.key == key
        assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError) as err:
        make_shards(images, tmp_path / "full")
    assert err.value.key == "out" and [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folder left behind
    assert main([str(images), str(tmp_path / "out"), "--shard-size", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --shard-size: must be an integer >= 1")
    (tmp_path / "empty").mkdir()
    assert main([str(images), str(tmp_path / "empty"), "--shard-size", "50", "--heldout-fraction", str(FRACTION)]) == 0
    assert "train 24 samples in 1 shards, val 11 samples in 1 shards" in capsys.readouterr().out  # an empty OUT is fine


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sptrack.data.make_shards", str(tmp_path / "nope"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ROOT: ") and "does not exist" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# --- ShardedImages: ranks and workers ----------------------------------------------------------------


def test_two_ranks_two_workers_see_every_sample_exactly_once(shard_set, tmp_path):
    _, shards = shard_set
    torchrun(WORKER, str(shards), str(tmp_path), nproc=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    labels = [label for *_, label in tar_samples(shards, "train")]
    val_labels = [label for *_, label in tar_samples(shards, "val")]
    reference = ShardedImages(shards, "train", 4, seed=3)
    orders = []
    for epoch in (0, 1):
        # 24 samples, 2 ranks x batch 4: 3 batches per rank (2 workers: runs of 2 and 1 batches), none dropped.
        assert [r["train_len"] for r in ranks] == [3, 3] and [len(r["train"][epoch]) for r in ranks] == [3, 3]
        seen = [[i for batch in r["train"][epoch] for i, _ in batch] for r in ranks]
        assert sorted(seen[0] + seen[1]) == list(range(24))
        assert all(labels[i] == y for r in ranks for batch in r["train"][epoch] for i, y in batch)
        # rank 0 holds the first half of the epoch order (the shards in their seeded order), rank 1 the second
        order = [reference.offsets[s] + k for s in reference.shard_order(epoch) for k in range(reference.counts[s])]
        assert set(seen[0]) == set(order[:12]) and set(seen[1]) == set(order[12:])
        orders.append(seen)
    assert orders[0] != orders[1]
    # val: 11 samples, no drop_last: blocks of 6, batches of 4 and 2 on both ranks, 1 padding sample on rank 1
    assert [r["val_len"] for r in ranks] == [2, 2] and [[len(b) for b in r["val"]] for r in ranks] == [[4, 2], [4, 2]]
    pairs = [pair for r in ranks for batch in r["val"] for pair in batch]
    assert sorted(i for i, _ in pairs if i >= 0) == list(range(11))
    assert [p for p in pairs if p[0] < 0] == [[-1, -1]]
    assert all(val_labels[i] == y for i, y in pairs if i >= 0)
    assert [i for batch in ranks[0]["val"] for i, _ in batch] == list(range(6))  # in order: rank 0 the first 6
    for r in ranks:  # resumed after one batch: exactly what the uninterrupted epoch yielded after it
        assert r["train_resumed"] == r["train"][1][1:] and r["val_resumed"] == r["val"][1:]


def test_workers_split_the_same_epoch_and_order_is_deterministic(shard_set):
    _, shards = shard_set

    def loader(workers: int, epoch: int = 0) -> ShardLoader:
        ds = ShardedImages(shards, "train", 4, size=8, shuffle_buffer=5, seed=1)
        ds.set_epoch(epoch)
        return ShardLoader(ds, num_workers=workers)

    single, multi = batches(loader(0)), batches(loader(2))
    assert len(single) == len(multi) == 6 == len(loader(0))
    for got in (single, multi):
        assert sorted(i for b in got for i in b["index"].tolist()) == list(range(24))
        assert all(b["image"].shape == (4, 3, 8, 8) and b["image"].dtype == torch.float32 for b in got)
    again = batches(loader(2))
    assert index_lists(again) == index_lists(multi)
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) for a, b in zip(again, multi))
    twice = loader(2)
    epoch0, epoch1 = index_lists(twice), index_lists(twice)  # the loader advances the epoch by itself
    assert epoch0 == index_lists(multi) and epoch1 == index_lists(loader(2, epoch=1)) and epoch0 != epoch1
    assert twice.dataset.state_dict() == {"seed": 1, "epoch": 1}


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_resume_yields_the_tail_of_the_epoch(shard_set):
    _, shards = shard_set
    # (workers, batch size, batches done): batch 5 gives 4 batches, split 1, 1, 2 over 3 workers
    for workers, batch, done in ((0, 4, (2, 6)), (2, 4, (1, 2, 3, 5)), (3, 5, (1, 2, 3))):
        ds = ShardedImages(shards, "train", batch, size=8, shuffle_buffer=5, seed=2)
        ds.set_epoch(1)
        full = index_lists(ShardLoader(ds, num_workers=workers))
        for k in done:
            ds = ShardedImages(shards, "train", batch, size=8, shuffle_buffer=5, seed=2)
            ds.resume(1, batch * k)
            loader = ShardLoader(ds, num_workers=workers)
            assert index_lists(loader) == full[k:], (workers, batch, k)
            assert ds.epoch == 1 and len(index_lists(loader)) == len(full)  # the next epoch starts from the top
    with pytest.raises(ValueError):
        ds.resume(0, 3)  # not whole batches
    # batches per worker 1, 2, 2: the loader yields w0 w1 w2 w1 | w2, so after 4 w2 is next, with one batch left
    assert round_robin_position([1, 2, 2], 4) == ([1, 2, 1], 2)
    assert round_robin_position([2, 2], 1) == ([1, 0], 1) and round_robin_position([2, 2], 4) == ([2, 2], 0)


def test_skipped_samples_are_not_decoded(tmp_path):
    from webdataset import TarWriter

    good = tmp_path / "g.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(good)
    with TarWriter(str(tmp_path / "train-000000.tar"), encoder=False) as sink:
        for i in range(8):  # the first batch's images are not images at all
            sink.write({"__key__": f"{i:06d}", "png": b"broken" if i < 4 else good.read_bytes(), "cls": b"0"})
    manifest = {"format": FORMAT, "classes": ["z"], "splits": {"train": [{"url": "train-000000.tar", "count": 8}]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = ShardedImages(tmp_path, "train", 4, shuffle=False)
    with pytest.raises(Exception):
        batches(ShardLoader(ds))
    ds.resume(0, 4)
    assert index_lists(ShardLoader(ds)) == [[4, 5, 6, 7]]
    manifest["splits"]["train"][0]["count"] = 9
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = ShardedImages(tmp_path, "train", 3, shuffle=False)
    ds.resume(0, 6)  # the last batch would be samples 6, 7 and the missing 8
    with pytest.raises(ConfigError, match="holds 8 samples but the manifest says 9"):
        batches(ShardLoader(ds))


# --- ShardedImages: pixels, transforms, errors -----------------------------------------------------------


def test_pixels_are_those_of_the_original_files(shard_set):
    images, shards = shard_set
    folder = build_dataset("image_folder", "val", root=images, seed=SEED, heldout_fraction=FRACTION)
    originals = [p.read_bytes() for p, _ in folder.samples]  # val is stored in folder order
    got = batches(ShardLoader(ShardedImages(shards, "val", 4, shuffle=False, drop_last=False, dtype=torch.uint8), num_workers=2))
    assert [len(b["index"]) for b in got] == [4, 4, 3]  # one rank: every sample, the last batch short
    for batch in got:
        assert batch["image"].dtype == torch.uint8
        for image, i, y in zip(batch["image"], batch["index"].tolist(), batch["label"].tolist()):
            assert torch.equal(image, decode_image(originals[i], False, "pillow")) and y == int(folder.targets[i])
    resized = next(iter(ShardLoader(ShardedImages(shards, "val", 2, shuffle=False, size=(8, 6), grayscale=True))))
    assert torch.equal(resized["image"][1], to_float(decode_image(originals[1], True, "pillow", (8, 6))))


def test_sample_transform_outputs_are_collated(shard_set):
    _, shards = shard_set

    def two_views(sample: dict, epoch: int) -> dict:
        return {"views": [sample["image"], sample["image"].flip(-1)], "index": sample["index"], "epoch": epoch}

    ds = ShardedImages(shards, "val", 3, size=8, sample_transform=two_views, drop_last=False)
    ds.set_epoch(4)
    batch = next(iter(ShardLoader(ds)))
    assert isinstance(batch["views"], list) and [v.shape for v in batch["views"]] == [(3, 3, 8, 8)] * 2
    assert torch.equal(batch["views"][1], batch["views"][0].flip(-1)) and batch["epoch"].tolist() == [4, 4, 4]


def test_bad_roots_and_splits_name_the_key_and_a_file_url_works(shard_set, tmp_path):
    _, shards = shard_set
    with pytest.raises(ConfigError) as err:
        ShardedImages(tmp_path, "train")
    assert err.value.key == "shards.root" and "manifest.json" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ShardedImages(shards, "trian")
    assert err.value.key == "shards.split" and "Did you mean 'train'?" in str(err.value)
    local = ShardedImages(shards, "val", 4, size=8, shuffle=False, drop_last=False)
    url = ShardedImages(shards.as_uri(), "val", 4, size=8, shuffle=False, drop_last=False)
    assert url.urls[0].startswith("file://") and url.classes == local.classes and url.num_classes == 3 and url.channels == 3
    assert [torch.equal(a["image"], b["image"]) for a, b in zip(ShardLoader(local), ShardLoader(url))] == [True] * 3
    assert len(ShardedImages(shards, "val", 4, drop_last=True)) == 2 and len(local) == 3
    state = ShardedImages(shards, "train", 4, seed=9)
    state.load_state_dict({"seed": 4, "epoch": 7})
    assert state.state_dict() == {"seed": 4, "epoch": 7}


def test_exact_resume_finds_the_stream_and_resumes_it_mid_epoch(shard_set):
    """What a checkpoint saved one batch into epoch 1 restores: ExactResume treats the stream as its sampler."""
    from types import SimpleNamespace

    from sptrack.callbacks.exact_resume import CHECKPOINT_KEY, ExactResume, resumable_sampler, rng_state

    _, shards = shard_set
    ds = ShardedImages(shards, "train", 4, size=8, seed=3)
    loader = ShardLoader(ds, num_workers=2)
    ds.set_epoch(1)
    uninterrupted = index_lists(loader)
    resumed = ShardLoader(ShardedImages(shards, "train", 4, size=8, seed=0), num_workers=2)
    callback = ExactResume(resumed)
    assert resumable_sampler(resumed) is resumed.dataset and callback.batch_size == 4
    state = {"version": 1, "rng": [rng_state()], "epoch": 1, "batches_done": 1, "batch_size": 4, "sampler": ds.state_dict()}
    callback.on_load_checkpoint(SimpleNamespace(world_size=1, global_rank=0), None, {CHECKPOINT_KEY: state})
    assert resumed.dataset.seed == 3 and index_lists(resumed) == uninterrupted[1:]


def test_recipe_loaders_refuse_a_subset_or_validation_split_of_a_stream(shard_set):
    from sptrack.data.loaders import recipe_loaders

    _, shards = shard_set
    for extra, key in (({"subset": 8}, "data.subset"), ({"validation_fraction": 0.1}, "data.validation_fraction")):
        with pytest.raises(ConfigError) as info:
            recipe_loaders("shards", 4, 4, None, root=str(shards), size=8, **extra)
        assert info.value.key == key
