"""Read a W&B run back from its local ``run-<id>.wandb`` file (offline or online), without the network.

wandb ≥ 0.2x has no public reader for these files. The format is a LevelDB-style log: a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header
(CRC32C, length uint16, type: 1 full, 2 first, 3 middle, 4 last) and a payload that is a serialised
``wandb_internal_pb2.Record`` protobuf. Used by the tests to check what a run logged, and handy to
inspect an offline run.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BLOCK = 32768
HEADER = 7


def iter_records(path: str) -> Iterator[Any]:
    """The protobuf ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind in (1, 2):
            buf = chunk
        elif kind in (3, 4):
            buf += chunk
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    """What a run logged: its config, its history rows (one dict per ``log`` call), its summary."""

    path: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> list[tuple[dict[str, Any], Any]]:
        """(row, value) for every history row holding ``key``."""
        return [(row, row[key]) for row in self.history if key in row]


def read_run(path: str) -> WandbRun:
    """A run from its ``.wandb`` file, or from a directory holding exactly one (searched recursively)."""
    if os.path.isdir(path):
        files = sorted(
            {
                os.path.realpath(f)
                for f in glob.glob(os.path.join(path, "**", "run-*.wandb"), recursive=True)
                if "latest-run" not in f.split(os.sep)
            }
        )
        if len(files) != 1:
            raise ValueError(f"expected one run-*.wandb under {path}, found {len(files)}: {files[:5]}")
        path = files[0]
    run = WandbRun(path)
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            updates = rec.run.config.update
        elif kind == "config":
            updates = rec.config.update
        elif kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in rec.history.item})
            continue
        elif kind == "summary":
            for i in rec.summary.update:
                run.summary[_item_key(i)] = json.loads(i.value_json)
            continue
        else:
            continue
        for u in updates:
            value = json.loads(u.value_json)
            run.config[_item_key(u)] = (
                value.get("value", value) if isinstance(value, dict) and set(value) <= {"value", "desc"} else value
            )
    return run
