"""Finalize of an unpacked Megatron dataset with memory flat in its size: the unit parts are read
one at a time and each shard's `.idx` is written in sections (lengths, pointers, document index)
to temporary files, assembled after its last document. The shards, their bytes and the manifest
entry are exactly those of prep.writers.megatron.finalize_key's in-memory merge (tested), which
packing still uses (a pack plan orders sequences across the whole dataset)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from loaders.formats import indexed
from prep.pipeline import durable
from prep.pipeline.durable import fsync_dir


class _Shard:
    """One shard being written: its token range and the index sections so far."""

    def __init__(self, out: Path, name: str, dtype: np.dtype, token_start: int):
        self.out, self.name, self.dtype, self.token_start = out, name, dtype, token_start
        self.tokens = self.sequences = self.documents = 0
        self.files = {s: open(out / f".{name}.{s}.tmp.{os.getpid()}", "wb") for s in ("lengths", "pointers", "documents")}
        self.files["documents"].write(np.zeros(1, "<i8").tobytes())

    def add(self, lengths: np.ndarray, documents: np.ndarray) -> None:
        """Whole documents: their sequence lengths, and sequences per document."""
        lengths = lengths.astype("<i4", copy=False)
        pointers = np.zeros(len(lengths), "<i8")
        if len(lengths):
            np.cumsum(lengths[:-1], dtype="<i8", out=pointers[1:])
            pointers += self.tokens
            pointers *= self.dtype.itemsize
        ends = np.cumsum(documents, dtype="<i8") + self.sequences
        self.files["lengths"].write(lengths.tobytes())
        self.files["pointers"].write(pointers.tobytes())
        self.files["documents"].write(ends.tobytes())
        self.tokens += int(lengths.sum(dtype=np.int64))
        self.sequences += len(lengths)
        self.documents += len(documents)

    def close(self, copy_bin) -> dict:
        """Write the .bin (`copy_bin(file, hasher, t0, t1)`) and assemble the .idx; the manifest's shard entry."""
        from prep.writers.megatron import _write_atomic, copy_range

        for f in self.files.values():
            f.close()
        bin_file, idx_file = indexed.bin_path(self.out / self.name), indexed.idx_path(self.out / self.name)
        bin_bytes, bin_hash = copy_bin(bin_file, self.token_start, self.token_start + self.tokens)
        header = indexed.HEADER.pack(indexed.MAGIC, indexed.VERSION, indexed.dtype_code(self.dtype), self.sequences, self.documents + 1)

        def write_idx(f, hasher):
            f.write(header)
            hasher.update(header)
            for section in ("lengths", "pointers", "documents"):
                with open(self.files[section].name, "rb") as part:
                    copy_range(part, f, hasher, 0, os.fstat(part.fileno()).st_size, what="index section")

        idx_bytes, idx_hash = _write_atomic(idx_file, write_idx)
        for f in self.files.values():
            os.unlink(f.name)
        return {"prefix": self.name, "documents": self.documents, "sequences": self.sequences, "tokens": self.tokens,
                "bin": {"path": bin_file.name, "bytes": bin_bytes, "xxh3_128": bin_hash},
                "idx": {"path": idx_file.name, "bytes": idx_bytes, "xxh3_128": idx_hash}}

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
            Path(f.name).unlink(missing_ok=True)


def finalize_key(workdir: Path, out: Path, units, key: str, dtype, shard_tokens: int | None, merged: dict | None = None) -> dict:
    """The shards of `key` from every unit's parts; returns the manifest entry (as megatron.finalize_key)."""
    from prep.writers.megatron import LengthHistogram, _copy_tokens, _write_atomic, dataset_name, read_part

    dtype = np.dtype(dtype)
    stems = [workdir / "parts" / f"{u.id}.{key}" for u in units]
    parts = [Path(f"{s}.bin") for s in stems]
    part_tokens = np.array([os.path.getsize(p) // dtype.itemsize for p in parts], np.int64)
    shards, histogram = [], LengthHistogram()
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # empty documents after a full shard: the next shard's, or the last's

    def name(number: int) -> str:
        return f"{dataset_name(key)}_{number:05d}" if shard_tokens else dataset_name(key)

    def copy_bin(path, t0, t1):
        if merged is not None and not shard_tokens:  # StreamingMerge wrote it already, fsynced
            durable.commit(merged["tmp"], path, sync_folder=False)
            return merged["bytes"], merged["xxh3_128"]
        return _write_atomic(path, lambda f, h: _copy_tokens(parts, part_tokens, t0, t1, dtype.itemsize, f, h))

    shard = _Shard(out, name(0), dtype, 0)
    base = 0
    try:
        for stem in stems:
            lengths, documents = read_part(stem)
            seq_ends = np.concatenate([[0], np.cumsum(documents, dtype=np.int64)])
            token_ends = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
            doc_tokens = token_ends[seq_ends[1:]] - token_ends[seq_ends[:-1]]
            histogram.add(doc_tokens)
            d = 0
            while d < len(documents):
                if shard_tokens and shard.tokens >= shard_tokens:  # full: empty documents wait, a token opens the next
                    empties = int(np.argmax(doc_tokens[d:] > 0)) if (doc_tokens[d:] > 0).any() else len(documents) - d
                    if empties:
                        pending.append((lengths[seq_ends[d]:seq_ends[d + empties]], documents[d:d + empties]))
                        d += empties
                        continue
                    shards.append(shard.close(copy_bin))
                    base += shard.tokens
                    shard = _Shard(out, name(len(shards)), dtype, base)
                    for held in pending:
                        shard.add(*held)
                    pending = []
                # documents up to the one that brings this shard to shard_tokens (or all of this part's)
                if shard_tokens:
                    needed = shard_tokens - shard.tokens
                    within = np.cumsum(doc_tokens[d:], dtype=np.int64)
                    stop = d + min(int(np.searchsorted(within, needed, side="left")) + 1, len(documents) - d)
                else:
                    stop = len(documents)
                shard.add(lengths[seq_ends[d]:seq_ends[stop]], documents[d:stop])
                d = stop
        for held in pending:  # only empty documents after the last full shard: they close it
            shard.add(*held)
        shards.append(shard.close(copy_bin))
    except BaseException:
        shard.abort()
        raise
    fsync_dir(out)
    return {"dtype": dtype.name, "documents": sum(s["documents"] for s in shards), "sequences": sum(s["sequences"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards), "shards": shards, "length_histogram": histogram.result()}

