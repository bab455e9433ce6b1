"""Parquet: units are runs of whole row groups; only the requested columns are read."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from prep.errors import BadRecord


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise BadRecord(path, None, f"unreadable Parquet file ({exc})") from None


def plan(path: Path, kind: str, unit_bytes: int) -> list[tuple[int, int]]:
    try:
        meta = _open(path).metadata
    except BadRecord:  # one unit whose read reports it: stops the run, or is skipped and counted
        return [(0, 0)]
    units, first, size = [], 0, 0
    for group in range(meta.num_row_groups):
        size += meta.row_group(group).total_byte_size
        if size >= unit_bytes:
            units.append((first, group + 1))
            first, size = group + 1, 0
    if first < meta.num_row_groups or not units:
        units.append((first, meta.num_row_groups))
    return units


def check_columns(path: Path, names: list[str], keys: list[str] | None) -> None:
    missing = [key for key in keys or [] if key not in names]
    if missing:
        raise BadRecord(path, None, f"no column {missing[0]!r} (columns: {', '.join(names)})")


def read(path: Path, kind: str, start: int, stop: int, keys: list[str], rejects, batch_bytes: int):
    """Batches (records, locate): `locate(j)` is the 1-based row number in the file. An unreadable
    file or row group is a bad record (at its first row): the run stops, or with --skip-invalid
    the rest of the unit is skipped and counted."""
    try:
        file = _open(path)
    except BadRecord as exc:
        rejects.add(path, None, exc.reason)
        return
    check_columns(path, file.schema_arrow.names, keys)
    first_row = sum(file.metadata.row_group(g).num_rows for g in range(start))
    rows = 0
    batches = file.iter_batches(batch_size=8192, row_groups=list(range(start, stop)), columns=keys)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a damaged page: pyarrow raises OSError or ArrowException
            rejects.add(path, first_row + rows + 1, f"unreadable Parquet data ({exc})")
            return
        if batch is None:
            return
        base = first_row + rows
        rows += batch.num_rows
        yield batch.to_pylist(), lambda j, base=base: base + j + 1
