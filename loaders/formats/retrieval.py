"""Retrieval outputs (`prep tokenize --recipe retrieval`): queries and distinct documents as two
Megatron datasets, and the table that ties them together.

Files beside `queries_document.bin/.idx` and `documents_document.bin/.idx`, each a `.npy`:
    table_positive_offsets.npy   int64 [Q+1]  query q's positives are positives[o[q]:o[q+1]]
    table_positives.npy          int64        document rows, in the record's order
    table_negative_offsets.npy   int64 [Q+1]
    table_negatives.npy          int64        document rows, every negative of the record, in order
    documents_ids.npy            int64 [D]    document_id_to_int64 of a corpus document's id; -1 inline
Row q of the queries dataset is query q; row d of the documents dataset is document d, each
distinct document stored once (the same text, or the same corpus id, is one document).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

TABLE_FILES = ("table_positive_offsets", "table_positives", "table_negative_offsets", "table_negatives", "documents_ids")
NO_ID = -1


def document_id_to_int64(document_id: str) -> int:
    """NeMo AutoModel's stable passage id (`nemo_automodel.shared.retrieval_ids`): the first 8
    bytes of the id's MD5, little-endian, cut to 63 bits."""
    digest = hashlib.md5(document_id.encode("utf-8")).digest()[:8]
    return int.from_bytes(digest, "little", signed=False) & ((1 << 63) - 1)


def table_path(out: str | Path, name: str) -> Path:
    return Path(out) / f"{name}.npy"


class Table:
    """The memory-mapped table of one retrieval output."""

    def __init__(self, out: str | Path):
        arrays = {name: np.load(table_path(out, name), mmap_mode="r") for name in TABLE_FILES}
        self.positive_offsets = arrays["table_positive_offsets"]
        self.positives = arrays["table_positives"]
        self.negative_offsets = arrays["table_negative_offsets"]
        self.negatives = arrays["table_negatives"]
        self.document_ids = arrays["documents_ids"]

    def __len__(self) -> int:
        return len(self.positive_offsets) - 1

    def positives_of(self, q: int) -> np.ndarray:
        return self.positives[self.positive_offsets[q]:self.positive_offsets[q + 1]]

    def negatives_of(self, q: int) -> np.ndarray:
        return self.negatives[self.negative_offsets[q]:self.negative_offsets[q + 1]]

    def negative_counts(self) -> np.ndarray:
        return np.diff(self.negative_offsets)


def truncate(tokens: np.ndarray, max_length: int, suffix: int) -> np.ndarray:
    """The first `max_length` tokens of a tokenized text the way HF tokenizers truncate it: the
    content is cut, the special tokens the post-processor adds stay (`suffix` of them at the end)."""
    if len(tokens) <= max_length:
        return tokens
    if suffix == 0:
        return tokens[:max_length]
    return np.concatenate([tokens[:max_length - suffix], tokens[len(tokens) - suffix:]])
