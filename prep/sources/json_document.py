"""A `.json` file that is one JSON document, not JSON Lines: a list of records, or an object
whose `data` list holds them (NeMo AutoModel's retrieval files; their other keys, such as
`corpus`, are the file's `header`). One unit a file; `locate(j)` finds record j's line."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import orjson

from prep.errors import BadRecord

PEEK = 1 << 16


def is_document(path: Path) -> bool:
    """A `.json` file is one document when its first line is not a JSON object on its own (a
    pretty-printed file, or a list), or is an object with a `data` list (a one-line document)."""
    with open(path, "rb") as f:
        head = f.read(PEEK)
        first = head.split(b"\n", 1)[0]
        if len(first) == len(head) == PEEK:  # a first line longer than the peek: read all of it
            first += f.readline()
    first = first.lstrip(b"\xef\xbb\xbf").strip()
    if not first:
        return bool(head.strip())
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        return True
    return not isinstance(value, dict) or isinstance(value.get("data"), list)


def plan(path: Path, kind: str, unit_bytes: int) -> list[tuple[int, int]]:
    return [(0, path.stat().st_size)]


@lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> tuple[list, dict, bytes]:
    data = path.read_bytes()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        line = data[:exc.pos].count(b"\n") + 1 if isinstance(getattr(exc, "pos", None), int) else None
        raise BadRecord(path, line, f"malformed JSON ({exc.args[0] if exc.args else exc})") from None
    if isinstance(value, list):
        return value, {}, data
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return value["data"], {k: v for k, v in value.items() if k != "data"}, data
    raise BadRecord(path, 1, "expected a JSON list of records, or an object with a 'data' list")


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def header(path: str | Path) -> dict:
    """The document's keys other than its records (`corpus`, ...)."""
    path = Path(path)
    return _load(path, _mtime(path))[1]


def line_of(path: str | Path, text: str) -> int | None:
    """The line where `text` (as JSON writes it) first appears in the file, for error messages."""
    path = Path(path)
    data = _load(path, _mtime(path))[2]
    at = data.find(json.dumps(text, ensure_ascii=False).encode())
    return data[:at].count(b"\n") + 1 if at >= 0 else None


def record_lines(path: Path) -> list[int]:
    """The line each record of the document starts on."""
    data = _load(path, _mtime(path))[2].decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    value_at = data.find("[", data.find('"data"') if data.lstrip().startswith("{") else 0)
    at, lines, line, counted = value_at + 1, [], 1, 0
    try:
        while True:
            while at < len(data) and data[at] in " \t\r\n,":
                at += 1
            if at >= len(data) or data[at] == "]":
                return lines
            line += data.count("\n", counted, at)
            counted = at
            lines.append(line)
            _, at = decoder.raw_decode(data, at)
    except ValueError:  # only for error messages: what was found is enough
        return lines


def read(path: Path, kind: str, start: int, stop: int, keys: list[str] | None, rejects, batch_bytes: int):
    records, _, _ = _load(path, _mtime(path))
    located: list[int] = []

    def locate(j: int) -> int:
        if not located:
            located.extend(record_lines(path))
        return located[j] if j < len(located) else None

    batch = 1024
    for first in range(0, len(records), batch):
        chunk, at = [], []
        for j in range(first, min(first + batch, len(records))):
            if isinstance(records[j], dict):
                chunk.append(records[j])
                at.append(j)
            else:
                rejects.add(path, lambda j=j: locate(j), f"expected a JSON object, got {type(records[j]).__name__}")
        yield chunk, lambda i, at=at: locate(at[i])
