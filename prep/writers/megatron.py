"""Megatron indexed datasets: per-unit parts, merged in unit order into `.bin`/`.idx` shards.

A part is two files per key: the tokens (`.bin`, final dtype), and the sequence lengths then
the sequences per document (`.seq.npy`, two int32 arrays one after the other). Finalize never
re-tokenizes: it concatenates token bytes and builds each index with numpy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from loaders.formats import indexed
from prep.pipeline import checksum, durable
from prep.pipeline.durable import fsync_dir, start_writeback
from prep.pipeline.units import Unit

COPY_BLOCK = 16 << 20
PARTS_FORMAT = 2  # 1: .len.npy + .doc.npy; 2: .seq.npy


def dataset_name(key: str) -> str:
    """Megatron's naming: `{prefix}_{key}_document`; our prefix is the output folder."""
    return f"{key}_document"


class PartWriter:
    """Appends encoded batches of one key to a unit's part files, then commits them."""

    def __init__(self, parts: Path, unit: Unit, key: str, dtype):
        self.stem = parts / f"{unit.id}.{key}"
        self.tmp = Path(f"{self.stem}.bin.tmp.{os.getpid()}")
        self.file = open(self.tmp, "wb")
        self.dtype = np.dtype(dtype)
        self.lengths: list[np.ndarray] = []
        self.documents: list[np.ndarray] = []
        self.tokens = 0

    def write(self, tokens: np.ndarray, sequence_lengths: np.ndarray, document_sequences: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(tokens, self.dtype.newbyteorder("<"))).cast("B")
        self.file.write(data)
        self.file.flush()
        start_writeback(self.file.fileno(), self.tokens * self.dtype.itemsize, len(data))
        self.tokens += len(tokens)
        self.lengths.append(sequence_lengths)
        self.documents.append(document_sequences)

    def commit(self) -> dict:
        """fsync and rename the parts; returns this key's counts for the done-record."""
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        documents = np.concatenate(self.documents) if self.documents else np.zeros(0, np.int32)
        with durable.open_durable(Path(f"{self.stem}.seq.npy"), sync_folder=False) as f:  # the lengths, then the documents
            np.save(f, lengths)
            np.save(f, documents)
        self.file.flush()  # the done-record's rename syncs the folder for both
        durable.commit(self.tmp, f"{self.stem}.bin", fd=self.file.fileno(), sync_folder=False)
        self.file.close()
        return {"documents": len(documents), "sequences": len(lengths), "tokens": self.tokens,
                "empty_documents": int((documents == 0).sum())}

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class StreamingMerge:
    """Appends the units' parts to the final `.bin` files in plan order, as soon as every earlier
    unit is done, so the copy overlaps tokenization instead of following it. The files keep a
    temporary name until finalize has written the index beside them."""

    def __init__(self, workdir: Path, out: Path, units: list[Unit], keys: list[str]):
        self.parts, self.units, self.keys = workdir / "parts", units, keys
        self.tmp = {key: out / f".{dataset_name(key)}.bin.tmp.{os.getpid()}" for key in keys}
        self.files: dict = {}
        self.restart(set())

    def restart(self, done: set[int]) -> None:
        """Start the files again from nothing, with these units already done."""
        for f in self.files.values():
            f.close()
        self.files = {key: open(path, "wb", buffering=COPY_BLOCK) for key, path in self.tmp.items()}
        self.hashers = {key: checksum.hasher() for key in self.keys}
        self.done, self.next = set(), 0
        for index in sorted(done):
            self.unit_done(index)

    def unit_done(self, index: int) -> None:
        self.done.add(index)
        while self.next < len(self.units) and self.units[self.next].index in self.done:
            unit = self.units[self.next]
            for key in self.keys:
                out = self.files[key]
                begin = out.tell()
                with open(self.parts / f"{unit.id}.{key}.bin", "rb") as f:
                    copy_range(f, out, self.hashers[key], 0, os.fstat(f.fileno()).st_size)
                start_writeback(out.fileno(), begin, out.tell() - begin)  # so that finish's fsync waits for little
            self.next += 1

    def finish(self) -> dict | None:
        """{key: {"tmp", "bytes", "xxh3_128"}} once every unit is merged, else None (and no files)."""
        if self.next < len(self.units):
            self.abort()
            return None
        merged = {}
        for key, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            merged[key] = {"tmp": str(self.tmp[key]), "bytes": f.tell(), "xxh3_128": self.hashers[key].hexdigest()}
            f.close()
        return merged

    def abort(self) -> None:
        for key, f in self.files.items():
            f.close()
            self.tmp[key].unlink(missing_ok=True)
        self.files = {}


def _shard_bounds(document_index: np.ndarray, token_ends: np.ndarray, shard_tokens: int | None) -> list[tuple[int, int]]:
    """Document ranges [d0, d1) of each shard: a shard closes after the document that brings it
    to `shard_tokens` or more, so no document is split and every shard is a valid dataset."""
    n_documents = len(document_index) - 1
    if not shard_tokens or n_documents == 0:
        return [(0, n_documents)]
    # tokens at the end of each document
    doc_end = np.concatenate([[0], token_ends])[document_index[1:]]
    bounds, d0, base = [], 0, 0
    while d0 < n_documents:
        d1 = int(np.searchsorted(doc_end, base + shard_tokens, side="left")) + 1
        d1 = min(max(d1, d0 + 1), n_documents)
        bounds.append((d0, d1))
        d0, base = d1, int(doc_end[d1 - 1])
    if len(bounds) > 1 and doc_end[bounds[-1][1] - 1] == doc_end[bounds[-1][0] - 1]:
        # only empty documents after the last full shard: they close it (an empty .bin can't be mapped)
        bounds[-2:] = [(bounds[-2][0], n_documents)]
    return bounds


def copy_range(f, out, hasher, offset: int, remaining: int, observe=None, what: str = "part") -> None:
    """Append bytes [offset, offset + remaining) of the open file `f` to the file `out`. The bytes
    move inside the kernel (copy_file_range, as cp does): only reads for the checksum (and
    `observe(block)`) reach Python; on some machines a user-space write costs twice the copy."""
    out.flush()
    fast = hasattr(os, "copy_file_range")
    while remaining:
        block = os.pread(f.fileno(), min(COPY_BLOCK, remaining), offset)
        if not block:
            raise OSError(f"{f.name}: {what} shorter than its done-record says")
        hasher.update(block)
        if observe is not None:
            observe(block)
        copied = 0
        while fast and copied < len(block):
            try:
                n = os.copy_file_range(f.fileno(), out.fileno(), len(block) - copied, offset + copied)
            except OSError:  # another file system, or a kernel without it: write the bytes read
                fast = False
                break
            if n == 0:
                break
            copied += n
        if copied < len(block):
            out.write(block[copied:])
            out.flush()
        offset += len(block)
        remaining -= len(block)


def _copy_tokens(parts: list[Path], part_tokens: np.ndarray, start: int, stop: int, itemsize: int, out, hasher,
                 skip: int = 0, observe=None) -> None:
    """Copy global token range [start, stop) from the unit parts, in order, into the file `out`
    (each part's tokens after `skip` header bytes: prep merge reads NanoGPT shards as parts)."""
    part_starts = np.concatenate([[0], np.cumsum(part_tokens)])
    for i, path in enumerate(parts):
        lo, hi = max(start, part_starts[i]), min(stop, part_starts[i + 1])
        if lo < hi:
            with open(path, "rb") as f:
                copy_range(f, out, hasher, skip + int(lo - part_starts[i]) * itemsize, int(hi - lo) * itemsize, observe)


def _write_atomic(path: Path, write) -> tuple[int, str]:
    """Run `write(file, hasher)` into a temporary name; fsync; rename. Returns (bytes, xxh3_128)."""
    hasher = checksum.hasher()
    with durable.open_durable(path, sync_folder=False, buffering=COPY_BLOCK) as f:  # the caller syncs the folder once
        write(f, hasher)
        size = f.tell()
    return size, hasher.hexdigest()


def read_part(stem) -> tuple[np.ndarray, np.ndarray]:
    """(sequence lengths, sequences per document) of the part `stem` (a unit's part of a key)."""
    with open(f"{stem}.seq.npy", "rb") as f:
        return np.load(f), np.load(f)


def part_lengths(workdir: Path, units: list[Unit], key: str) -> np.ndarray:
    """Sequence lengths of every unit's part of `key`, in unit order."""
    return np.concatenate([read_part(workdir / "parts" / f"{u.id}.{key}")[0] for u in units] or [np.zeros(0, np.int32)])


def finalize_key(workdir: Path, out: Path, units: list[Unit], key: str, dtype, shard_tokens: int | None,
                 packs: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Merge the parts of `key` into shards; returns the manifest entry for this dataset.

    With `packs` (order, pack sizes from prep.tokenize.pack), sequences are written in that order and
    each pack is one document whose sequences are its samples."""
    dtype = np.dtype(dtype)
    parts = workdir / "parts"
    stems = [parts / f"{u.id}.{key}" for u in units]
    lengths, documents = zip(*map(read_part, stems)) if stems else ((), ())
    documents = np.concatenate(documents or [np.zeros(0, np.int32)])
    part_tokens = np.array([int(a.sum(dtype=np.int64)) for a in lengths], np.int64)
    sequence_lengths = np.concatenate(lengths or [np.zeros(0, np.int32)])
    document_index = np.zeros(len(documents) + 1, np.int64)
    np.cumsum(documents, out=document_index[1:])
    sample_lengths = sequence_lengths
    if packs is not None:
        order, sizes = packs
        source_starts = np.concatenate([[0], np.cumsum(sequence_lengths, dtype=np.int64)])[order]
        sequence_lengths = sequence_lengths[order]
        document_index = np.concatenate([[0], np.cumsum(sizes)])
    token_ends = np.cumsum(sequence_lengths, dtype=np.int64)

    bounds = _shard_bounds(document_index, token_ends, shard_tokens)
    shards = []
    for number, (d0, d1) in enumerate(bounds):
        name = dataset_name(key) if len(bounds) == 1 and not shard_tokens else f"{dataset_name(key)}_{number:05d}"
        s0, s1 = int(document_index[d0]), int(document_index[d1])
        t0 = int(token_ends[s0 - 1]) if s0 else 0
        t1 = int(token_ends[s1 - 1]) if s1 else 0
        bin_file, idx_file = indexed.bin_path(out / name), indexed.idx_path(out / name)
        if packs is None:
            bin_bytes, bin_hash = _write_atomic(bin_file, lambda f, h: _copy_tokens(
                [Path(f"{s}.bin") for s in stems], part_tokens, t0, t1, dtype.itemsize, f, h))
        else:
            bin_bytes, bin_hash = _write_atomic(bin_file, lambda f, h: _gather_tokens(
                stems, part_tokens, source_starts[s0:s1], sequence_lengths[s0:s1], dtype, f, h))
        buffers = indexed.encode_index(dtype, sequence_lengths[s0:s1], document_index[d0:d1 + 1] - s0)
        idx_bytes, idx_hash = _write_atomic(idx_file, lambda f, h: [(f.write(b), h.update(b)) for b in buffers])
        shards.append({
            "prefix": name, "documents": d1 - d0, "sequences": s1 - s0, "tokens": t1 - t0,
            "bin": {"path": bin_file.name, "bytes": bin_bytes, "xxh3_128": bin_hash},
            "idx": {"path": idx_file.name, "bytes": idx_bytes, "xxh3_128": idx_hash},
        })
    fsync_dir(out)
    doc_tokens = np.diff(np.concatenate([[0], token_ends])[document_index]) if len(document_index) > 1 else np.zeros(0, np.int64)
    return {"dtype": dtype.name, "documents": len(document_index) - 1, "sequences": len(sequence_lengths),
            "tokens": int(token_ends[-1]) if len(token_ends) else 0, "shards": shards,
            "length_histogram": length_histogram(sample_lengths if packs is not None else doc_tokens)}


def _gather_tokens(stems: list[Path], part_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, dtype, out, hasher) -> None:
    """Write the sequences at global token offsets `starts` (in this order) from the unit parts."""
    parts = [np.memmap(f"{s}.bin", dtype=dtype, mode="r") if n else np.zeros(0, dtype) for s, n in zip(stems, part_tokens)]
    part_starts = np.concatenate([[0], np.cumsum(part_tokens)])
    which = np.searchsorted(part_starts, starts, "right") - 1
    buffer = bytearray()
    for part, start, length in zip(which, starts, lengths):
        local = int(start - part_starts[part])
        buffer += parts[part][local:local + int(length)].tobytes()
        if len(buffer) >= COPY_BLOCK:
            out.write(buffer)
            hasher.update(buffer)
            buffer = bytearray()
    out.write(buffer)
    hasher.update(buffer)


class LengthHistogram:
    """Document lengths in tokens, in power-of-two bins: counts[i] holds lengths in [edges[i],
    edges[i+1]); accumulated batch by batch (the streamed finalize) or at once (`length_histogram`)."""

    POWERS = np.left_shift(np.int64(1), np.arange(63, dtype=np.int64))  # 1, 2, 4, ...: a length's bin is how many it reaches

    def __init__(self):
        self.counts, self.top, self.any = np.zeros(64, np.int64), 0, False

    def add(self, doc_tokens: np.ndarray) -> None:
        if len(doc_tokens):
            self.any = True
            self.top = max(self.top, int(doc_tokens.max()))
            np.add.at(self.counts, np.searchsorted(self.POWERS, doc_tokens, side="right"), 1)

    def result(self) -> dict:
        if not self.any:
            return {"edges": [0, 1], "counts": [0]}
        bits = max(1, self.top).bit_length()
        edges = [0, 1] + [1 << k for k in range(1, bits + 1)]
        return {"edges": edges + [edges[-1] * 2], "counts": self.counts[:bits + 2].tolist()}


def length_histogram(doc_tokens: np.ndarray) -> dict:
    histogram = LengthHistogram()
    histogram.add(np.asarray(doc_tokens))
    return histogram.result()
