"""CSV and TSV files with a header row: each row is a record of strings keyed by the header.

A file is one unit (a quoted field may hold newlines, so a byte offset can't start a row).
Rows stream in batches; `locate(j)` is the line a row starts on, as the csv module counts.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from prep.errors import BadRecord

csv.field_size_limit(sys.maxsize)  # a document can be longer than csv's 128 KiB default


def plan(path: Path, kind: str, unit_bytes: int) -> list[tuple[int, int]]:
    return [(0, path.stat().st_size)]


def read(path: Path, kind: str, start: int, stop: int, keys: list[str] | None, rejects, batch_bytes: int):
    delimiter = "\t" if kind == "tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BadRecord(path, 1, f"unreadable header ({exc})") from None
        if not header:
            return
        missing = [key for key in keys or [] if key not in header]
        if missing:
            raise BadRecord(path, 1, f"no column {missing[0]!r} (columns: {', '.join(header)})")
        records, lines, size = [], [], 0
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader, None)
            except (csv.Error, UnicodeDecodeError) as exc:
                rejects.add(path, line, f"malformed {kind.upper()} ({exc})")
                continue
            if row is None:
                break
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                rejects.add(path, line, f"{len(row)} fields, the header has {len(header)}")
                continue
            records.append(dict(zip(header, row)))
            lines.append(line)
            size += sum(map(len, row))
            if size >= batch_bytes:
                yield records, lambda j, lines=lines: lines[j]
                records, lines, size = [], [], 0
        if records:
            yield records, lambda j, lines=lines: lines[j]
