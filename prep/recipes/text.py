"""Pretraining text: each record's text under a key is one document, as Megatron-LM tokenizes it.

`tools/preprocess_data.py` semantics (Encoder.encode): a string is one sequence; a list of
strings is one sequence per non-empty string; EOD is appended to a document's last sequence
only when the document has tokens, so an empty document has no sequences but still counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prep.recipes.base import Recipe, register


@dataclass
class Documents:
    """Encoded documents of one batch under one key."""

    tokens: np.ndarray  # flat, output dtype
    sequence_lengths: np.ndarray  # int32, one a sequence
    document_sequences: np.ndarray  # int32, sequences per document (0 for an empty document)


def texts_of(records: list[dict], key: str, reject) -> tuple[list[str], list[int], list[int]]:
    """(sentences, document of each sentence, records kept): strings under `key`; others go to `reject(j, reason)`."""
    try:  # the common case, a string in every record, without a Python loop of appends
        values = [record[key] for record in records]
        if all(type(v) is str for v in values):
            return values, range(len(values)), range(len(values))
    except KeyError:
        pass
    sentences, owner, kept = [], [], []
    for j, record in enumerate(records):
        value = record.get(key, _MISSING)
        if type(value) is str:
            sentences.append(value)
            owner.append(len(kept))
            kept.append(j)
            continue
        if type(value) is list and all(type(v) is str for v in value):
            sentences.extend(value)
            owner.extend([len(kept)] * len(value))
            kept.append(j)
            continue
        if value is _MISSING:
            reason = f"missing key {key!r}"
        elif value is None:
            reason = f"key {key!r} is null"
        else:
            reason = f"key {key!r} is {_json_type(value)}, expected a string"
        reject(j, reason)
    return sentences, owner, kept


def assemble(ids: np.ndarray, offsets: np.ndarray, owner: np.ndarray, n_documents: int,
             eod: int | None, bos: int | None, dtype) -> Documents:
    """Insert BOS/EOD around each non-empty document and derive Megatron's sequence lengths.

    `ids`/`offsets` are the flat ids of every sentence; `owner[s]` is sentence s's document.
    """
    lengths = np.diff(offsets)
    kept = np.flatnonzero(lengths > 0)
    document = owner[kept]
    sequence_lengths = lengths[kept]
    first = np.ones(len(kept), bool)
    first[1:] = document[1:] != document[:-1]
    last = np.ones(len(kept), bool)
    last[:-1] = document[1:] != document[:-1]
    # EOD positions are listed before BOS positions: at a shared position (the end of one
    # document, the start of the next) np.insert keeps that order, EOD then BOS.
    # Ids fit the output dtype (it was chosen from the vocabulary size): int32 is a view of the
    # uint32 ids, uint16 a cast of the ids alone, before the insert copies them once more.
    dtype = np.dtype(dtype)
    ids = ids.view(dtype) if dtype.itemsize == ids.dtype.itemsize else ids.astype(dtype)
    positions, values = [], []
    if eod is not None:
        positions.append(offsets[kept[last] + 1])
        values.append(np.full(int(last.sum()), eod, dtype))
        sequence_lengths[last] += 1
    if bos is not None:
        positions.append(offsets[kept[first]])
        values.append(np.full(int(first.sum()), bos, dtype))
        sequence_lengths[first] += 1
    tokens = np.insert(ids, np.concatenate(positions), np.concatenate(values)) if positions else ids
    return Documents(
        tokens=tokens,
        sequence_lengths=sequence_lengths.astype(np.int32),
        document_sequences=np.bincount(document, minlength=n_documents).astype(np.int32),
    )


class _Missing:
    pass


_MISSING = _Missing()


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list of non-strings"}.get(type(value), type(value).__name__)


@register
class TextRecipe(Recipe):
    """Pretraining text: one document per record under each --text-key (one dataset per key)."""

    name = "text"
    help = "text: each record's text is one pretraining document."

    def encode_batch(self, records, locate, path, rejects, writers, encoder, counts) -> int:
        keys, dtype = self.job["keys"], np.dtype(self.job["dtype"])
        texts = _texts(records, keys, locate, path, rejects)
        for key, (sentences, owner, kept) in texts.items():
            ids, offsets = encoder.encode(sentences)
            docs = assemble(ids, offsets, np.asarray(owner, np.int64), len(kept), self.job["eod_id"], self.job["bos_id"], dtype)
            writers[key].write(docs.tokens, docs.sequence_lengths, docs.document_sequences)
        return len(texts[keys[0]][2])


def _texts(records: list[dict], keys: list[str], locate, path: str, rejects) -> dict:
    """texts_of for every key. A record bad under one key is rejected from all, so the
    datasets of several keys keep the same documents."""
    bad: dict[int, str] = {}
    texts = {key: texts_of(records, key, lambda j, reason: bad.setdefault(j, reason)) for key in keys}
    if not bad:
        return texts
    for j in sorted(bad):
        rejects.add(path, lambda j=j: locate(j), bad[j])
    records = [r for j, r in enumerate(records) if j not in bad]
    return {key: texts_of(records, key, reject=None) for key in keys}
