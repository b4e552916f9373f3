"""``python -m sptrack.data.make_shards ROOT OUT``: an image folder as WebDataset tar shards plus a manifest.

The shards hold the folder's files byte for byte (no re-encoding), so a model trained from them sees
the same pixels as one trained from the folder, and the train/val split is the one ``build_dataset
("image_folder", ...)`` makes for the same ``seed`` and ``heldout_fraction``. Read them with
:class:`sptrack.data.shards.ShardedImages`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from sptrack.data.base import split_indices
from sptrack.data.folder import ImageFolder, has_split_dirs
from sptrack.errors import ConfigError

__all__ = ["FORMAT", "main", "make_shards"]
#: The ``format`` entry of every manifest this module writes.
FORMAT = "sptrack-shards/1"
USAGE = "python -m sptrack.data.make_shards ROOT OUT [--shard-size 1000] [--heldout-fraction 0.2] [--seed 0]"
# Added to the seed for the order of the train samples, so that it is not the split's own draw.
_ORDER_SEED_OFFSET = 7919
# What each function argument is called on the command line, for the CLI's error lines.
_FLAGS = {"root": "ROOT", "out": "OUT", "shard_size": "--shard-size", "heldout_fraction": "--heldout-fraction"}


def make_shards(root: Union[str, Path], out: Union[str, Path], shard_size: int = 1000, heldout_fraction: float = 0.2,
                seed: int = 0) -> dict:
    """Write ``out/train-000000.tar, ...``, ``out/val-000000.tar, ...`` and ``out/manifest.json``; return the manifest.

    ``root`` is ``root/<class>/<image>`` (then "val" is the seeded, class-stratified
    ``heldout_fraction`` that ``build_dataset("image_folder", "val", root=root, seed=seed,
    heldout_fraction=...)`` holds out, and "train" the rest) or ``root/train/<class>/...`` plus
    ``root/val/<class>/...`` (then ``seed`` only orders the train samples). Each sample is the
    original file under the extension "jpg" (for .jpg/.jpeg) or "png" and its label under "cls"; its
    key is its position in the split. Train samples are written in a seeded shuffled order, so every
    shard mixes the classes (a reader that shuffles shards and a bounded buffer then draws
    class-mixed batches); val samples in folder order. At most ``shard_size`` samples per shard.

    The manifest is ``{"format", "classes", "splits": {split: [{"url", "count"}, ...]}}`` with urls
    relative to ``out``. Everything is written into a temporary folder beside ``out`` that is renamed
    to ``out`` at the end, so a failure leaves no partial shard set.

    Raises:
        ConfigError: key ``root`` (missing, not an image folder, fewer than 2 images to split),
            ``out`` (exists and is not an empty folder), ``shard_size`` (< 1) or ``heldout_fraction``
            (not in (0, 1)).
    """
    root, out = Path(root), Path(out)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError("shard_size", f"must be an integer >= 1, got {shard_size!r}.", "Use e.g. 1000.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("out", f"{str(out)!r} already exists and is not an empty folder.",
                          "Give a new folder (it is created), or remove the old shard set first.")
    classes, splits = _split(root, heldout_fraction, int(seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest = {"format": FORMAT, "classes": classes,
                    "splits": {name: _write_split(tmp, name, samples, shard_size) for name, samples in splits.items()}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); a rename onto it is not portable
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _split(root: Path, fraction, seed: int) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and the ``(path, label)`` samples of "train" (in write order) and "val"."""
    try:
        if root.is_dir() and has_split_dirs(root, key="root"):
            train, val = ImageFolder(root / "train"), ImageFolder(root / "val")
        else:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise ConfigError("heldout_fraction", f"must be a number in (0, 1), got {fraction!r}.", "Use e.g. 0.2.")
            folder = ImageFolder(root)
            n = len(folder)
            if n < 2:
                raise ConfigError("root", f"{str(root)!r} holds {n} image; a held-out split needs at least 2.", "Add images.")
            # The same call as sptrack.data.registry._image_folder: a folder and its shards split alike.
            n_val = min(max(1, round(fraction * n)), n - 1)
            labels = folder.targets.numpy()
            train, val = (folder.select(split_indices(labels, n_val, name, seed)) for name in ("train", "val"))
    except ConfigError as err:
        if err.key.startswith("image_folder."):
            raise ConfigError("root", str(err).split(": ", 1)[1]) from None
        raise
    order = np.random.default_rng(seed + _ORDER_SEED_OFFSET).permutation(len(train))
    return list(train.classes), {"train": [train.samples[i] for i in order], "val": list(val.samples)}


def _write_split(folder: Path, split: str, samples: list[tuple[Path, int]], shard_size: int) -> list[dict]:
    """Write ``samples`` as ``folder/<split>-NNNNNN.tar`` shards; their ``{"url", "count"}`` entries."""
    from webdataset import TarWriter  # imported here: only writing and reading shards need webdataset

    width = max(6, len(str(len(samples) - 1)))
    shards = []
    for start in range(0, len(samples), shard_size):
        url = f"{split}-{len(shards):06d}.tar"
        chunk = samples[start:start + shard_size]
        # encoder=False: the bytes go in as they are; mtime=0 makes the same input give the same tar bytes.
        with TarWriter(str(folder / url), encoder=False, mtime=0) as sink:
            for position, (path, label) in enumerate(chunk, start):
                ext = "png" if path.suffix.lower() == ".png" else "jpg"
                sink.write({"__key__": f"{position:0{width}d}", ext: path.read_bytes(), "cls": str(int(label)).encode()})
        shards.append({"url": url, "count": len(chunk)})
    return shards


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors, printed as one ``error:`` line like ``sptrack.run``'s."""

    def error(self, message: str):
        raise ConfigError("arguments", f"{message}.", f"Usage: {USAGE}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for a bad input, printed as one ``error: <key>: ...`` line)."""
    parser = _Parser(prog="python -m sptrack.data.make_shards", usage=USAGE, allow_abbrev=False,
                     description="Convert an image folder into WebDataset tar shards plus manifest.json.")
    parser.add_argument("root", metavar="ROOT", help="ROOT/<class>/<image> or ROOT/{train,val}/<class>/<image>")
    parser.add_argument("out", metavar="OUT", help="new folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="val share without train/val folders (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the train order (default 0)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        manifest = make_shards(args.root, args.out, args.shard_size, args.heldout_fraction, args.seed)
    except ConfigError as err:
        problem = str(err).split(": ", 1)[1] if ": " in str(err) else str(err)
        print(f"error: {_FLAGS.get(err.key, err.key)}: {' '.join(problem.split())}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{name} {sum(s['count'] for s in shards)} samples in {len(shards)} shards"
                       for name, shards in manifest["splits"].items())
    print(f"wrote {args.out}: {counts}, {len(manifest['classes'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
