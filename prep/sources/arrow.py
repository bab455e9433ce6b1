"""Arrow files as `datasets.Dataset.save_to_disk` writes them (IPC stream or file format)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from prep.errors import BadRecord
from prep.sources.parquet import check_columns


def plan(path: Path, kind: str, unit_bytes: int) -> list[tuple[int, int]]:
    return [(0, path.stat().st_size)]


def _open(path: Path):
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        file = pa.ipc.open_file(source)
        return (file.get_batch(i) for i in range(file.num_record_batches))


def read(path: Path, kind: str, start: int, stop: int, keys: list[str], rejects, batch_bytes: int):
    """Batches (records, locate): `locate(j)` is the 1-based row number in the file."""
    try:
        batches = _open(path)
    except Exception as exc:
        raise BadRecord(path, None, f"unreadable Arrow file ({exc})") from None
    rows = 0
    for batch in batches:
        check_columns(path, batch.schema.names, keys)
        base = rows
        rows += batch.num_rows
        yield (batch.select(keys) if keys else batch).to_pylist(), lambda j, base=base: base + j + 1
