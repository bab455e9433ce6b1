"""JSON Lines, plain or compressed (.gz, .zst), parsed strictly with orjson.

Plain files are cut into byte ranges; a line belongs to the unit its first byte falls in, so
units need no scan to plan and no two units read the same line. Compressed files can't be
entered mid-stream and are one unit each. Blank lines are not records and are passed over.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zlib
from pathlib import Path

import orjson
import zstandard



def plan(path: Path, kind: str, unit_bytes: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    if kind != "jsonl" or size <= unit_bytes:
        return [(0, size)]
    return [(start, min(start + unit_bytes, size)) for start in range(0, size, unit_bytes)]


def _plain_chunks(path: Path, start: int, stop: int, batch_bytes: int):
    """(byte offset, chunk of whole lines) over the lines that start in [start, stop)."""
    with open(path, "rb", buffering=0) as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # mid-line: that line is the previous unit's
                pos = start + len(_rest_of_line(f))
        f.seek(pos)
        while pos < stop:
            chunk = f.read(min(batch_bytes, stop - pos))
            if not chunk:
                break
            if not chunk.endswith(b"\n"):
                chunk += _rest_of_line(f)
            yield pos, chunk
            pos += len(chunk)


def _rest_of_line(f) -> bytes:
    parts = []
    while True:
        block = f.read(1 << 16)
        if not block:
            return b"".join(parts)
        cut = block.find(b"\n")
        if cut >= 0:
            parts.append(block[: cut + 1])
            f.seek(cut + 1 - len(block), io.SEEK_CUR)
            return b"".join(parts)
        parts.append(block)


def _line_at(path: Path, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (only computed for errors)."""
    count = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            block = f.read(min(1 << 24, remaining))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


def _zstd_blocks(raw, size: int):
    """Decompressed blocks of a (multi-frame) zstd stream; raises EOFError if it ends mid-frame."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    pending = False
    while True:
        data = raw.read(size)
        if not data:
            break
        while data:
            pending = True
            out = decompressor.decompress(data)
            if out:
                yield out
            data = b""
            if decompressor.eof:
                pending = False
                data = decompressor.unused_data
                decompressor = zstandard.ZstdDecompressor().decompressobj()
    if pending:
        raise EOFError("stream ends inside a frame")


def _gzip_blocks(raw, size: int):
    """Decompressed blocks of about `size` bytes. `read(size)` would drop what it decompressed
    before a truncation or corruption; pieces are gathered with `read1` instead, and those before
    the break are handed out before the error, so it names the line where the stream breaks."""
    with gzip.GzipFile(fileobj=raw) as stream:
        pieces, held = [], 0
        try:
            while piece := stream.read1(size - held):
                pieces.append(piece)
                held += len(piece)
                if held >= size:
                    yield b"".join(pieces)
                    pieces, held = [], 0
        except (EOFError, OSError, zlib.error):
            if pieces:
                yield b"".join(pieces)
            raise
        if pieces:
            yield b"".join(pieces)


def _stream_chunks(path: Path, kind: str, batch_bytes: int, rejects):
    """(line number of the first line, chunk of whole lines) through a decompressing stream.

    A truncated or corrupt stream is a bad record at the line where it breaks: the run stops,
    or with --skip-invalid keeps the lines before it."""
    line = 1
    carry = b""
    try:
        with open(path, "rb") as raw:
            blocks = _gzip_blocks(raw, batch_bytes) if kind == "jsonl.gz" else _zstd_blocks(raw, batch_bytes)
            for block in blocks:
                block = carry + block
                cut = block.rfind(b"\n") + 1
                carry = block[cut:]
                if cut:
                    yield line, block[:cut]
                    line += block.count(b"\n", 0, cut)
    except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
        what = "gzip" if kind == "jsonl.gz" else "zstd"
        rejects.add(path, line, f"truncated or corrupt {what} stream ({exc})")
        return
    if carry:
        yield line, carry


def read(path: Path, kind: str, start: int, stop: int, keys: list[str], rejects, batch_bytes: int):
    """Batches (records, locate): `locate(j)` is the line number of record j, computed lazily.

    Malformed lines go to `rejects` with their line number."""
    chunks = _plain_chunks(path, start, stop, batch_bytes) if kind == "jsonl" else _stream_chunks(path, kind, batch_bytes, rejects)
    for origin, chunk in chunks:
        if origin == (0 if kind == "jsonl" else 1) and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8):]  # the byte order mark some Windows tools open a file with
            origin += len(codecs.BOM_UTF8) if kind == "jsonl" else 0  # a byte offset there, a line number here
        lines = chunk.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        records, at = [], []
        for i, line in enumerate(lines):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    continue
                detail = str(exc.args[0] if exc.args else exc)
                # orjson names bad bytes "str is not valid UTF-8: surrogates not allowed"
                reason = f"malformed JSON ({'not valid UTF-8' if 'UTF-8' in detail else detail})"
            else:
                if type(record) is dict:
                    records.append(record)
                    at.append(i)
                    continue
                reason = f"expected a JSON object, got {type(record).__name__}"
            rejects.add(path, _line_number(path, kind, origin, lines, i), reason)
        yield records, lambda j, origin=origin, lines=lines, at=at: _line_number(path, kind, origin, lines, at[j])()


def _line_number(path: Path, kind: str, origin: int, lines: list[bytes], i: int):
    """A thunk for the line number of `lines[i]`; plain files count newlines only when asked."""
    if kind == "jsonl":  # origin is a byte offset
        return lambda: _line_at(path, origin + sum(len(line) + 1 for line in lines[:i]))
    return lambda: origin + i
