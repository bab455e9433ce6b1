"""Retrieval corpora for bi-encoder training: (query, positive documents, hard negatives).

Two schemas, as NeMo AutoModel reads them: inline rows (`query` or `question`, `pos_doc`,
`neg_doc`; a document is a string, a `{"text": ...}` object, or a list of them) in JSONL, CSV or
TSV (a cell holding a JSON list is a list of documents), and corpus-id JSON documents (`corpus`
folders and `data` rows whose `pos_doc` / `neg_doc` name documents by id). Texts get AutoModel's
collator prefixes (`prefix + " " + text`) or the corpus's instructions, then the tokenizer's own
special tokens. Each distinct document (the same final text, or the same corpus id) is tokenized
once a unit and stored once an output (prep.writers.retrieval merges the units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from xxhash import xxh3_128_digest

from loaders.formats.retrieval import NO_ID, document_id_to_int64, truncate
from prep.errors import PrepError
from prep.recipes.base import Recipe, register
from prep.recipes.retrieval_corpus import corpora_of
from prep.recipes.special_tokens import special_tokens
from prep.sources import file_kind, json_document
from prep.writers import retrieval as table_writer


TEXT_KEY, ID_KEY = 1, 2  # xxh3 seeds: a text and a corpus id never share a key


class _Bad(Exception):
    pass


def _documents(value, by_id: bool) -> list[tuple[str, str]]:
    """A pos_doc / neg_doc value as [("text", text) | ("id", id)]. In a corpus-id file a bare
    string or number is an id (AutoModel reads a bare string one character at a time)."""
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    docs = []
    for doc in value:
        if type(doc) is str:
            docs.append(("id" if by_id else "text", doc))
        elif isinstance(doc, dict):
            if "text" in doc:
                docs.append(("text", "" if doc["text"] is None else str(doc["text"])))
            elif "id" in doc and by_id:
                docs.append(("id", str(doc["id"])))
            elif "id" in doc:
                raise _Bad(f"document {orjson.dumps(doc).decode()[:80]} names an id, but this file names no corpus")
            else:
                raise _Bad(f"a document object needs 'text' or 'id' (keys: {', '.join(map(str, doc))})")
        elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
            docs.append(("id" if by_id else "text", str(doc)))
        else:
            raise _Bad(f"a document is {type(doc).__name__}, expected a string or an object")
    return docs


def _cell(value):
    """A CSV/TSV cell: a JSON list of documents when it parses as one, else one document (empty: none)."""
    if not isinstance(value, str):
        return value
    if value.startswith("["):
        try:
            parsed = orjson.loads(value)
            if isinstance(parsed, list):
                return parsed
        except orjson.JSONDecodeError:
            pass
    return value if value else None


@register
class RetrievalRecipe(Recipe):
    """Queries, distinct documents and the table of (query, positives, negatives)."""

    name = "retrieval"
    help = "retrieval: (query, pos_doc, neg_doc) rows or corpus-id JSON for bi-encoder training."
    keys = ["queries", "documents"]
    # A unit tokenizes each distinct document once: larger units tokenize shared negatives fewer
    # times (bench/retrieval.py: 0.70x -> 0.76x of --recipe text, 8 -> 32 MiB units).
    min_unit_bytes = 32 << 20

    def __init__(self, job: dict, tokenizer_json: str):
        super().__init__(job, tokenizer_json)
        c = job["config"]
        self.query_prefix, self.passage_prefix = c["query_prefix"] or "", c["passage_prefix"] or ""
        self.use_instruction = c["use_dataset_instruction"]
        self.query_max, self.doc_max = c["query_max_length"], c["doc_max_length"]
        self.before, self.after = (np.array(ids, np.int64) for ids in job["retrieval"]["special_tokens"])
        self.dtype = np.dtype(job["dtype"])
        self._files: dict[str, tuple[dict | None, bool]] = {}
        self.table = None

    def source_keys(self) -> list[str] | None:
        return None

    @classmethod
    def prepare(cls, config, spec) -> dict:
        if config.format != "megatron":
            raise PrepError("--recipe retrieval writes Megatron datasets (queries, documents) and a table; --format nanogpt is for --recipe text")
        for flag, value in (("--eod", config.eod), ("--bos", config.bos)):
            if value:
                raise PrepError(f"{flag}: --recipe retrieval adds the special tokens the tokenizer itself adds, as AutoModel's collator does")
        config.eod = config.bos = False
        for flag, value in (("--query-max-length", config.query_max_length), ("--doc-max-length", config.doc_max_length)):
            if value is not None and value < 1:
                raise PrepError(f"{flag} {value}: expected a positive number of tokens")
        before, after = special_tokens(spec.json)
        return {"retrieval": {"special_tokens": [before, after]}}

    @classmethod
    def finalize_parts(cls, job, workdir, out, units):
        datasets, stats, files = table_writer.finalize(workdir, out, units, job["dtype"])
        c = job["config"]
        before, after = job["retrieval"]["special_tokens"]
        fields = {"retrieval": {"special_tokens": {"before": before, "after": after},
                                "query_prefix": c["query_prefix"] or "", "passage_prefix": c["passage_prefix"] or "",
                                "use_dataset_instruction": c["use_dataset_instruction"],
                                "query_max_length": c["query_max_length"], "doc_max_length": c["doc_max_length"],
                                "files": files}}
        return datasets, stats, fields

    @classmethod
    def probe_keys(cls) -> list[str]:
        return ["query", "question"]

    def open_unit(self, parts: Path, unit) -> None:
        self.table = table_writer.UnitTable(parts, unit)

    def close_unit(self) -> dict:
        return self.table.commit()

    def abort_unit(self) -> None:
        if self.table is not None:
            self.table.abort()

    def _file(self, path: str, rejects) -> tuple[dict | None, bool]:
        """(the corpora of a corpus-id JSON file or None for inline files, whether its values are
        CSV/TSV cells), found once a file."""
        if path not in self._files:
            kind = file_kind(path)
            by_id = kind == "json" and "corpus" in json_document.header(path)
            corpora = corpora_of(path, lambda line, reason: rejects.add(path, line, reason)) if by_id else None
            self._files[path] = corpora, kind in ("csv", "tsv")
        return self._files[path]

    def _record(self, record: dict, corpora: dict | None, cells: bool) -> tuple[str, list, list]:
        """(query text, positives, negatives) of a record, each document (dedup key, text, id)."""
        query = record.get("query", record.get("question"))
        if not isinstance(query, str):
            raise _Bad("missing key 'query' (or 'question')" if query is None else f"the query is {type(query).__name__}, expected a string")
        if not query.strip():
            raise _Bad("empty query")
        corpus_id = record.get("corpus_id")
        corpus = corpora.get(str(corpus_id)) if corpora is not None and corpus_id is not None else None
        by_id = corpora is not None
        if cells:
            pos_value, neg_value = _cell(record.get("pos_doc")), _cell(record.get("neg_doc"))
        else:
            pos_value, neg_value = record.get("pos_doc"), record.get("neg_doc")
        if self.use_instruction:
            if corpus is None:
                raise _Bad(f"--use-dataset-instruction: no corpus metadata for corpus_id {corpus_id!r}")
            qi, pi = corpus.query_instruction, corpus.passage_instruction
            query = f"{qi} {query}" if qi else query
        else:
            query = f"{self.query_prefix} {query}" if self.query_prefix else query
            pi = self.passage_prefix
        pi = pi + " " if pi else ""

        def resolve(value) -> list[tuple[bytes, str, int]]:
            docs = []
            for kind, doc in _documents(value, by_id):
                if kind == "text":
                    text = pi + doc
                    docs.append((xxh3_128_digest(text.encode(), TEXT_KEY), text, NO_ID))
                    continue
                if corpus_id is None:
                    raise _Bad(f"document id {doc!r} but the record has no corpus_id")
                if corpus is None:
                    raise _Bad(f"corpus_id {str(corpus_id)!r} is not among the file's corpora ({', '.join(sorted(corpora)) or 'none'})")
                text = corpus.text(doc)
                if text is None:
                    raise _Bad(f"document id {doc!r} is not in corpus {corpus.corpus_id!r} ({corpus.path})")
                key = xxh3_128_digest(corpus.corpus_id.encode() + b"\0" + doc.encode(), ID_KEY)
                docs.append((key, pi + text, document_id_to_int64(doc) if doc else NO_ID))
            return docs

        positives = resolve(pos_value)
        if not positives:
            raise _Bad("no positive document (pos_doc is missing or empty)")
        return query, positives, resolve(neg_value)

    def _tokens(self, ids: np.ndarray, offsets: np.ndarray, k: int, cap: int | None, counts: dict) -> np.ndarray:
        tokens = ids[offsets[k]:offsets[k + 1]]
        if len(self.before) or len(self.after):
            tokens = np.concatenate([self.before, tokens, self.after])
        if cap and len(tokens) > cap:
            counts["truncated"] += 1
            tokens = truncate(tokens, cap, len(self.after))
        return tokens

    def encode_batch(self, records, locate, path, rejects, writers, encoder, counts) -> int:
        corpora, cells = self._file(path, rejects)
        rows = []
        for j, record in enumerate(records):
            try:
                rows.append((j, *self._record(record, corpora, cells)))
            except _Bad as exc:
                rejects.add(path, lambda j=j: locate(j), str(exc))
        # the texts this unit has not seen yet, once each, in order
        new: dict[bytes, int] = {}
        texts = []
        table = self.table
        for _, _, positives, negatives in rows:
            for digest, text, _ in positives + negatives:
                if digest not in new and not table.has(digest):
                    new[digest] = len(texts)
                    texts.append(text)
        q_ids, q_offsets = encoder.encode([query for _, query, _, _ in rows])
        d_ids, d_offsets = encoder.encode(texts)
        specials = len(self.before) + len(self.after)
        empty = set(np.flatnonzero(np.diff(d_offsets) == 0).tolist()) if not specials else set()
        queries, documents = [], []
        for k, (j, _, positives, negatives) in enumerate(rows):
            docs = positives + negatives
            if empty and any(new.get(digest) in empty for digest, _, _ in docs):
                rejects.add(path, lambda j=j: locate(j), "empty document (no tokens: an all-zero attention row, NaN under mean pooling)")
                continue
            queries.append(self._tokens(q_ids, q_offsets, k, self.query_max, counts))
            refs = []
            for digest, _, doc_id in docs:
                row, added = table.document(digest, doc_id)
                if added:
                    documents.append(self._tokens(d_ids, d_offsets, new[digest], self.doc_max, counts))
                refs.append(row)
            table.add(refs[:len(positives)], refs[len(positives):])
        for key, items in (("queries", queries), ("documents", documents)):
            if items:
                lengths = np.fromiter(map(len, items), np.int32, len(items))
                writers[key].write(np.concatenate(items).astype(self.dtype, copy=False), lengths, np.ones(len(items), np.int32))
        return len(queries)
