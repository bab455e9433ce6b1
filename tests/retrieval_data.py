"""Retrieval corpora for the tests, in both of NeMo AutoModel's schemas, from real text: documents
shared across queries as negatives, fewer and more negatives than asked, long and non-ASCII texts."""

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import TOKENIZERS, botchan_documents, write_jsonl

NON_ASCII = ["Größe und Maß — überall.", "東京は日本の首都です。", "Ça coûte 5 € à Montréal.", "Ёлка 🎄 и снег ❄️"]


def passages(n: int, seed: int = 0) -> list[str]:
    texts = [d["text"].strip() or "blank" for d in botchan_documents(n, seed)]
    for i, extra in enumerate(NON_ASCII):
        texts[(i * 7) % n] = extra + " " + texts[(i * 7) % n]
    return texts


def inline_rows(n_queries: int = 40, seed: int = 0) -> list[dict]:
    """Rows whose negatives come from a small pool (so documents repeat), 1..7 negatives each."""
    rng = random.Random(seed)
    pool = passages(60, seed)
    rows = []
    for q in range(n_queries):
        positive = pool[rng.randrange(len(pool))]
        negatives = rng.sample(pool, rng.randint(1, 7))
        form = q % 3  # a string, a {"text"} object, or a list of them
        pos = positive if form == 0 else {"text": positive} if form == 1 else [{"text": positive}, pool[q % len(pool)]]
        neg = [n if i % 2 else {"text": n} for i, n in enumerate(negatives)]
        key = "query" if q % 4 else "question"
        rows.append({key: f"question {q}: " + NON_ASCII[q % 4] + " " + pool[(q * 3) % len(pool)][:80], "pos_doc": pos, "neg_doc": neg})
    return rows


def write_inline(folder: Path, n_queries: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_jsonl(folder / "train.jsonl", inline_rows(n_queries, seed))


def write_corpus(folder: Path, corpus_id: str, texts: list[str], instructions: bool = True) -> list[str]:
    """A corpus folder as AutoModel's preparer writes it; returns the document ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"{corpus_id}-{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / "train.parquet")
    metadata = {"corpus_id": corpus_id, "class": "TextQADataset"}
    if instructions:
        metadata.update(query_instruction=f"Instruct: find {corpus_id} passages. Query:", passage_instruction="Passage:")
    (folder / "merlin_metadata.json").write_text(json.dumps(metadata))
    return ids


def write_corpus_id(folder: Path, n_queries: int = 30, seed: int = 1) -> Path:
    """A corpus-id JSON (pretty-printed) over two corpora, relative paths, ids as objects and bare strings."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    corpora = {"wiki": write_corpus(folder / "corpora" / "wiki", "wiki", passages(50, seed)),
               "news": write_corpus(folder / "corpora" / "news", "news", passages(30, seed + 1))}
    data = []
    for q in range(n_queries):
        cid = "wiki" if q % 3 else "news"
        ids = corpora[cid]
        pos = [{"id": ids[rng.randrange(len(ids))]} for _ in range(1 + q % 2)]
        neg = [{"id": i} if k % 2 else i for k, i in enumerate(rng.sample(ids, rng.randint(1, 6)))]
        data.append({"question_id": f"q{q}", "question": f"{NON_ASCII[q % 4]} question {q} about {cid}?", "corpus_id": cid,
                     "pos_doc": pos, "neg_doc": neg})
    path = folder / "train.json"
    path.write_text(json.dumps({"corpus": [{"path": "corpora/wiki"}, {"path": "corpora/news"}], "data": data}, indent=2, ensure_ascii=False))
    return path


def bos_eos_tokenizer(root: Path) -> Path:
    """Llama-3's tokenizer with a post-processor adding BOS and EOS around every text (as BERT-like
    embedding models' tokenizers do): truncation must keep the EOS, and AutoModel's single-turn
    preprocessor strips them where context and target meet."""
    wrapped = root / "llama3-bos-eos"
    shutil.copytree(TOKENIZERS / "llama3", wrapped)
    spec = json.loads((wrapped / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                         {"SpecialToken": {"id": eos, "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {bos: {"id": bos, "ids": [ids[bos]], "tokens": [bos]},
                                                 eos: {"id": eos, "ids": [ids[eos]], "tokens": [eos]}}}
    (wrapped / "tokenizer.json").write_text(json.dumps(spec))
    return wrapped
