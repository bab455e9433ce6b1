"""Retrieval tables: a unit's table part while it runs, and the finalize that stores each
distinct document once for the whole output.

A unit part (`{unit}.table.npy`) holds, one np.save after the other: positive offsets,
positives, negative offsets, negatives (rows of the unit's own documents), the unit documents'
xxh3-128 keys ([n, 16] uint8) and their int64 ids. Finalize finds each key's first appearance in
plan order, so the documents dataset and the rows in the table are those a single process
reading the inputs in order would give, whatever the workers or tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loaders.formats.retrieval import TABLE_FILES, table_path
from prep.pipeline import checksum, durable
from prep.pipeline.units import Unit
from prep.writers import megatron

MAX_FEWER_THAN = 64  # the manifest counts queries with fewer negatives than n, for n up to this


class UnitTable:
    """One unit's documents (key -> row) and its rows of (positives, negatives)."""

    def __init__(self, parts: Path, unit: Unit):
        self.path = parts / f"{unit.id}.table.npy"
        self.rows: dict[bytes, int] = {}
        self.ids: list[int] = []
        self.positives: list[int] = []
        self.negatives: list[int] = []
        self.positive_offsets, self.negative_offsets = [0], [0]

    def has(self, digest: bytes) -> bool:
        return digest in self.rows

    def document(self, digest: bytes, doc_id: int) -> tuple[int, bool]:
        """(the document's row in this unit, whether it is new here)."""
        row = self.rows.get(digest)
        if row is not None:
            return row, False
        self.rows[digest] = row = len(self.ids)
        self.ids.append(doc_id)
        return row, True

    def add(self, positives: list[int], negatives: list[int]) -> None:
        self.positives += positives
        self.negatives += negatives
        self.positive_offsets.append(len(self.positives))
        self.negative_offsets.append(len(self.negatives))

    def commit(self) -> dict:
        keys = np.frombuffer(b"".join(self.rows), np.uint8).reshape(-1, 16)  # dicts keep insertion order: row order
        arrays = [np.array(self.positive_offsets, np.int64), np.array(self.positives, np.int64),
                  np.array(self.negative_offsets, np.int64), np.array(self.negatives, np.int64),
                  keys, np.array(self.ids, np.int64)]
        with durable.open_durable(self.path, sync_folder=False) as f:  # the done-record's rename syncs the folder
            for array in arrays:
                np.save(f, array)
        return {"retrieval": {"queries": len(self.positive_offsets) - 1, "unit_documents": len(self.ids),
                              "references": len(self.positives) + len(self.negatives)}}

    def abort(self) -> None:
        durable.temporary(self.path).unlink(missing_ok=True)


def read_part(path: Path) -> list[np.ndarray]:
    with open(path, "rb") as f:
        return [np.load(f) for _ in range(6)]


def _save(out: Path, name: str, array: np.ndarray) -> dict:
    path = table_path(out, name)
    with durable.open_durable(path, sync_folder=False) as f:
        np.save(f, np.ascontiguousarray(array, "<i8"))
    return {"path": path.name, "bytes": path.stat().st_size, "xxh3_128": checksum.file_checksum(path)}


def finalize(workdir: Path, out: Path, units: list[Unit], dtype) -> tuple[dict, dict, dict]:
    """(datasets, stats, files): the queries and distinct documents as Megatron datasets, and the
    table files, each with its checksum."""
    parts = [read_part(workdir / "parts" / f"{u.id}.table.npy") for u in units]
    keys = np.concatenate([p[4] for p in parts] or [np.zeros((0, 16), np.uint8)])
    ids = np.concatenate([p[5] for p in parts] or [np.zeros(0, np.int64)])
    unit_base = np.concatenate([[0], np.cumsum([len(p[5]) for p in parts])]).astype(np.int64)
    # each distinct key's first appearance, in plan order, is its row
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    row_of_group = np.empty(len(order), np.int64)
    row_of_group[order] = np.arange(len(order))
    row = row_of_group[inverse.ravel()]
    kept = first[order]

    datasets = {"queries": megatron.finalize_key(workdir, out, units, "queries", dtype, None)}
    documents = megatron.finalize_key(workdir, out, units, "documents", dtype, None, packs=(kept, np.ones(len(kept), np.int64)))
    lengths = megatron.part_lengths(workdir, units, "documents")[kept]
    documents["length_histogram"] = megatron.length_histogram(lengths)
    datasets["documents"] = documents

    table = {}
    for kind, offsets_at, rows_at in (("positive", 0, 1), ("negative", 2, 3)):
        counts = np.concatenate([np.diff(p[offsets_at]) for p in parts] or [np.zeros(0, np.int64)])
        rows = np.concatenate([row[unit_base[i] + p[rows_at]] for i, p in enumerate(parts)] or [np.zeros(0, np.int64)])
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        table[f"table_{kind}_offsets"], table[f"table_{kind}s"] = offsets, rows
    table["documents_ids"] = ids[kept]
    files = {name: _save(out, name, table[name]) for name in TABLE_FILES}
    durable.fsync_dir(out)

    negatives = np.diff(table["table_negative_offsets"])
    top = int(negatives.max()) if len(negatives) else 0
    stats = {
        "queries": len(negatives), "distinct_documents": len(kept),
        "documents_referenced": int(len(table["table_positives"]) + len(table["table_negatives"])),
        "positives_per_query_max": int(np.diff(table["table_positive_offsets"]).max()) if len(negatives) else 0,
        "negatives_per_query": {"min": int(negatives.min()) if len(negatives) else 0, "max": top,
                                "mean": round(float(negatives.mean()), 4) if len(negatives) else 0.0},
        "fewer_negatives_than": {str(n): int((negatives < n).sum()) for n in range(1, min(top + 1, MAX_FEWER_THAN) + 1)},
        "table_bytes": sum(f["bytes"] for f in files.values()),
    }
    return datasets, stats, files
