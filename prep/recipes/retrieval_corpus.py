"""The corpora a corpus-id retrieval file names (NeMo AutoModel's layout): each `corpus` entry's
`path` is a folder (relative paths resolve against the JSON file) holding `merlin_metadata.json`
(`corpus_id`, optional `query_instruction` / `passage_instruction`) and a `train` split with `id`
and `text` columns (`train.parquet` as AutoModel's preparer writes it, or train*.parquet /
.jsonl / .arrow files, or a `save_to_disk` folder named train)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prep.errors import BadRecord
from prep.sources import json_document


@dataclass
class Corpus:
    corpus_id: str
    path: Path
    query_instruction: str = ""
    passage_instruction: str = ""
    _texts: dict | None = field(default=None, repr=False)

    def text(self, doc_id: str) -> str | None:
        """The text of document `doc_id`, or None when the corpus has no such id."""
        if self._texts is None:
            self._texts = _read_split(self.path)
        return self._texts.get(doc_id)


def _split_files(folder: Path) -> list[Path]:
    for pattern in ("train.parquet", "train-*.parquet", "train*.parquet", "data/train*.parquet", "train*.jsonl", "train*.arrow"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    if (folder / "train" / "state.json").exists():
        from prep.sources import expand_inputs

        return expand_inputs([str(folder / "train")])
    return []


def _read_split(folder: Path) -> dict:
    """{id: text} of the corpus's train split (ids as strings, as AutoModel keys them)."""
    files = _split_files(folder)
    if not files:
        raise BadRecord(folder, None, "the corpus folder has no train split (train.parquet, train*.jsonl or train*.arrow)")
    texts: dict[str, str] = {}
    for path in files:
        if path.suffix == ".jsonl":
            import orjson

            rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            ids, values = [r.get("id") for r in rows], [r.get("text") for r in rows]
        else:
            import pyarrow.parquet as pq
            import pyarrow as pa

            if path.suffix == ".parquet":
                table = pq.read_table(path, columns=None)
            else:
                with pa.memory_map(str(path)) as source:
                    try:
                        table = pa.ipc.open_stream(source).read_all()
                    except pa.ArrowInvalid:
                        table = pa.ipc.open_file(source).read_all()
            missing = [c for c in ("id", "text") if c not in table.column_names]
            if missing:
                raise BadRecord(path, None, f"the corpus has no {missing[0]!r} column (columns: {', '.join(table.column_names)})")
            ids, values = table.column("id").to_pylist(), table.column("text").to_pylist()
        for doc_id, text in zip(ids, values):
            texts[str(doc_id)] = "" if text is None else str(text)
    return texts


def corpora_of(path: str, report) -> dict[str, Corpus]:
    """{corpus_id: Corpus} of a corpus-id JSON file. A missing folder or metadata goes to
    `report(line, reason)` (at the line that names it), which raises or skips that corpus."""
    entries = json_document.header(path).get("corpus", [])
    if isinstance(entries, dict):
        entries = [entries]
    corpora: dict[str, Corpus] = {}
    base = Path(path).resolve().parent
    for entry in entries:
        where = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(where, str) or not where:
            report(json_document.line_of(path, "corpus"), "a 'corpus' entry without a 'path'")
            continue
        folder = Path(where) if Path(where).is_absolute() else (base / where).resolve()
        line = json_document.line_of(path, where)
        metadata_file = folder / "merlin_metadata.json"
        if not folder.is_dir():
            report(line, f"corpus folder {folder} does not exist")
            continue
        if not metadata_file.is_file():
            report(line, f"corpus folder {folder} has no merlin_metadata.json")
            continue
        try:
            metadata = json.loads(metadata_file.read_text())
            corpus_id = str(metadata["corpus_id"])
        except (ValueError, KeyError, TypeError) as exc:
            report(line, f"{metadata_file}: no corpus_id in the corpus metadata ({exc})")
            continue
        if corpus_id in corpora and corpora[corpus_id].path != folder:
            report(line, f"corpus id {corpus_id!r} names two folders: {corpora[corpus_id].path} and {folder}")
            continue
        corpora[corpus_id] = Corpus(corpus_id, folder, metadata.get("query_instruction") or "", metadata.get("passage_instruction") or "")
    return corpora
