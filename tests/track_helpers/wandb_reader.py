"""Read a W&B offline run file (``run-<id>.wandb``) back into protobuf records.

wandb 0.31 writes it from its Go core and ships no Python reader. The format is the LevelDB log
format with a W&B header:

* file header, 7 bytes: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version ``0`` (uint8);
* then 32 KiB blocks (counted from the start of the file) of chunks, each with a 7-byte header
  ``<I H B``: CRC-32 (IEEE, seeded with the CRC of the type byte) of the payload, payload length,
  chunk type (1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST); a block tail shorter than a chunk header is
  zero padding;
* the payloads of FULL / FIRST+MIDDLE*+LAST chunks are serialized ``wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path) -> Iterator[bytes]:
    """Every record payload in the file, in order; raises ValueError on a corrupt file."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack_from("<4sHB", data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B log (header {ident!r} {magic:#x} v{version})")
    pos = 7
    pending: bytearray | None = None
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER > len(data):
            break
        checksum, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0 and checksum == 0:
            pos += left_in_block  # an unused block tail
            continue
        start = pos + CHUNK_HEADER
        payload = data[start:start + length]
        if len(payload) != length:
            raise ValueError(f"{path}: truncated chunk at offset {pos}")
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: bad checksum at offset {pos}")
        pos = start + length
        if kind == FULL:
            yield bytes(payload)
        elif kind == FIRST:
            pending = bytearray(payload)
        elif kind == MIDDLE and pending is not None:
            pending += payload
        elif kind == LAST and pending is not None:
            pending += payload
            yield bytes(pending)
            pending = None
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at offset {pos}")


def read_records(path: str | Path) -> list[pb.Record]:
    """All ``Record`` messages of the file."""
    out = []
    for payload in iter_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def wait_until_closed(path: str | Path, timeout: float = 20.0) -> None:
    """Wait until the file ends with its ``exit`` record.

    ``run.finish()`` returns once W&B's core process has the run's records; that process may write
    the file's last block a moment later.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            kinds = [r.WhichOneof("record_type") for r in read_records(path)]
        except (OSError, ValueError):
            kinds = []
        if kinds and kinds[1:2] == ["run"] and "exit" in kinds:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout}s (records: {kinds[:5]}...{kinds[-5:]})")
        time.sleep(0.1)


def _key(item) -> str:
    return item.key if item.key else "/".join(item.nested_key)


def _put(target: dict, item) -> None:
    """Store an item's value; ``nested_key [a, b]`` goes to ``target[a][b]``."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = json.loads(item.value_json)


class WandbRun:
    """What a `.wandb` file says about its run: id, config, history rows, summary, files, exit."""

    def __init__(self, path: str | Path, wait: bool = True):
        self.path = Path(path)
        if wait:
            wait_until_closed(path)
        self.records = read_records(path)
        self.run_id: str | None = None
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.files: list[str] = []
        self.exit_code: int | None = None
        self.metric_definitions: list = []
        for record in self.records:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run_id = record.run.run_id
                for item in record.run.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    self.config[_key(item)] = json.loads(item.value_json)
                for item in record.config.remove:
                    self.config.pop(_key(item), None)
            elif kind == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    _put(row, item)
                self.history.append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    _put(self.summary, item)
            elif kind == "files":
                self.files.extend(f.path for f in record.files.files)
            elif kind == "exit":
                self.exit_code = record.exit.exit_code
            elif kind == "metric":
                self.metric_definitions.append(record.metric)

    def series(self, key: str, step_key: str = "trainer/global_step") -> list[tuple[int, Any]]:
        """``(row[step_key], row[key])`` for every history row holding ``key`` (W&B's own ``_step`` with ``step_key="_step"``)."""
        return [(row[step_key], row[key]) for row in self.history if key in row]

    @property
    def files_dir(self) -> Path:
        return self.path.parent / "files"
