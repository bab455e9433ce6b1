"""Megatron indexed dataset (`.bin` + `.idx`), as Megatron-Core's `IndexedDataset` reads it.

`.idx` layout, little-endian:
    9 bytes  magic b"MMIDIDX\\x00\\x00"
    u64      version (1)
    u8       dtype code of the tokens in `.bin`
    u64      sequence count S
    u64      document count D (length of the document index, so documents + 1)
    S x i32  sequence lengths (tokens)
    S x i64  sequence byte offsets into `.bin`
    D x i64  document index: sequence number where each document starts, then S
`.bin` is the raw tokens of every sequence, back to back.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count

DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
# Megatron-Core's DType.optimal_dtype: uint16 only below this cardinality.
UINT16_LIMIT = 65500


def optimal_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with Megatron's margin, else int32 (Megatron's own rule)."""
    return np.dtype(np.uint16 if vocab_size < UINT16_LIMIT else np.int32)


def dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == dtype:
            return code
    raise ValueError(f"dtype {dtype} has no Megatron code")


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def encode_index(dtype, sequence_lengths: np.ndarray, document_index: np.ndarray) -> list[bytes]:
    """The `.idx` bytes for these sequences, as a list of buffers to write in order.

    `document_index` starts at 0 and ends at len(sequence_lengths), like Megatron's builder.
    """
    dtype = np.dtype(dtype)
    lengths = np.ascontiguousarray(sequence_lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], dtype="<i8", out=pointers[1:])
        pointers *= dtype.itemsize
    documents = np.ascontiguousarray(document_index, dtype="<i8")
    header = HEADER.pack(MAGIC, VERSION, dtype_code(dtype), len(lengths), len(documents))
    return [header, lengths.tobytes(), pointers.tobytes(), documents.tobytes()]


class IndexedDataset:
    """Memory-mapped reader: `ds[i]` is sequence i as a numpy array (a view, no copy)."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        index = np.memmap(idx_path(prefix), dtype=np.uint8, mode="r")
        magic, version, code, n_seq, n_doc = HEADER.unpack_from(index, 0)
        if magic != MAGIC:
            raise ValueError(f"{idx_path(prefix)}: not a Megatron index (bad magic)")
        if version != VERSION:
            raise ValueError(f"{idx_path(prefix)}: index version {version}, expected {VERSION}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = HEADER.size
        self.sequence_lengths = np.frombuffer(index, "<i4", n_seq, offset)
        offset += 4 * n_seq
        self.sequence_pointers = np.frombuffer(index, "<i8", n_seq, offset)
        offset += 8 * n_seq
        self.document_indices = np.frombuffer(index, "<i8", n_doc, offset)
        self._index = index
        size = bin_path(prefix).stat().st_size
        self.tokens = np.memmap(bin_path(prefix), dtype=self.dtype, mode="r") if size else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i, like Megatron-Core's `IndexedDataset.get`."""
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        stop = start + (int(self.sequence_lengths[i]) - offset if length is None else length)
        return self.tokens[start:stop]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(int(i))

    def document(self, d: int) -> np.ndarray:
        """All tokens of document d (its sequences are contiguous in `.bin`)."""
        first, last = int(self.document_indices[d]), int(self.document_indices[d + 1])
        if first == last:
            return self.tokens[:0]
        start = int(self.sequence_pointers[first]) // self.dtype.itemsize
        stop = int(self.sequence_pointers[last - 1]) // self.dtype.itemsize + int(self.sequence_lengths[last - 1])
        return self.tokens[start:stop]
