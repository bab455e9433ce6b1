"""loaders.retrieval over prep's retrieval output against NeMo AutoModel's make_retrieval_dataset +
BiEncoderCollator on the same raw rows: batches equal tensor for tensor."""

import json

import numpy as np
import pytest

from helpers import TOKENIZERS, assert_same_batches, prep
from loaders.retrieval import RetrievalDataset, collate
from retrieval_data import bos_eos_tokenizer, write_corpus_id, write_inline

retrieval_dataset = pytest.importorskip("nemo_automodel.components.datasets.llm.retrieval_dataset")
from nemo_automodel.components.datasets.llm.retrieval_collator import BiEncoderCollator  # noqa: E402


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Real tokenizers, and llama3 with a post-processor adding BOS and EOS (as BERT-like embedding
    models' tokenizers do), so truncation must keep the trailing special token."""
    root = tmp_path_factory.mktemp("toks")
    wrapped = bos_eos_tokenizer(root)
    return {"smollm2": TOKENIZERS / "smollm2-135m-instruct", "llama3": TOKENIZERS / "llama3", "llama3-bos-eos": wrapped}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("retr")
    return {"inline": write_inline(root / "inline"), "corpus_id": write_corpus_id(root / "cid")}


@pytest.fixture(autouse=True)
def _offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hf_tokenizer(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _automodel_batches(path, tok, negatives, q_max_len, p_max_len, prefixes, instruction, multiple, batch_size=8, epoch=0,
                       cycle=False):
    ds = retrieval_dataset.make_retrieval_dataset(data_dir_list=[str(path)], n_passages=negatives + 1,
                                                  use_dataset_instruction=instruction, cycle_positive_docs=cycle)
    if cycle:
        ds.set_epoch(epoch)
    collator = BiEncoderCollator(tok, q_max_len=q_max_len, p_max_len=p_max_len, query_prefix=prefixes[0],
                                 passage_prefix=prefixes[1], pad_to_multiple_of=multiple, use_dataset_instruction=instruction)
    return [collator([ds[i] for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)]


def _ours(out, tok, negatives, q_max_len, p_max_len, multiple, batch_size=8, epoch=0, cycle=False):
    ds = RetrievalDataset(out, negatives=negatives, q_max_len=q_max_len, p_max_len=p_max_len, cycle_positive_docs=cycle)
    ds.set_epoch(epoch)
    return [collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))], tok.pad_token_id, multiple)
            for s in range(0, len(ds), batch_size)]


CASES = [  # schema, tokenizer, negatives, q_max_len, p_max_len, (query prefix, passage prefix), dataset instruction, pad multiple
    ("inline", "smollm2", 4, 512, 512, ("query:", "passage:"), False, 8),
    ("inline", "llama3", 9, 24, 40, ("", ""), False, None),  # more negatives than any row has; truncation
    ("inline", "llama3-bos-eos", 2, 16, 32, ("query:", ""), False, 8),  # truncation keeps the EOS
    ("corpus_id", "llama3", 3, 64, 48, ("", ""), True, None),
    ("corpus_id", "smollm2", 1, 512, 512, ("query:", "passage:"), False, 16),
    ("corpus_id", "llama3-bos-eos", 8, 20, 30, ("", ""), True, 4),
]


@pytest.mark.parametrize("schema,tokenizer,negatives,q_max_len,p_max_len,prefixes,instruction,multiple", CASES)
def test_batches_equal_automodel(tmp_path, tokenizers, corpora, schema, tokenizer, negatives, q_max_len, p_max_len, prefixes,
                                 instruction, multiple):
    out = tmp_path / "out"
    flags = ["--use-dataset-instruction"] if instruction else ["--query-prefix", prefixes[0], "--passage-prefix", prefixes[1]]
    prep("tokenize", corpora[schema], "-o", out, "--recipe", "retrieval", "--tokenizer", tokenizers[tokenizer], *flags)
    tok = _hf_tokenizer(tokenizers[tokenizer])
    theirs = _automodel_batches(corpora[schema], tok, negatives, q_max_len, p_max_len, prefixes, instruction, multiple)
    assert_same_batches(_ours(out, tok, negatives, q_max_len, p_max_len, multiple), theirs)
    assert ("passage_doc_ids" in theirs[0]) == (schema == "corpus_id")


def test_cycle_positive_docs_by_epoch(tmp_path, tokenizers, corpora):
    out = tmp_path / "out"
    prep("tokenize", corpora["corpus_id"], "-o", out, "--recipe", "retrieval", "--tokenizer", tokenizers["smollm2"])
    tok = _hf_tokenizer(tokenizers["smollm2"])
    for epoch in (0, 1, 2):
        theirs = _automodel_batches(corpora["corpus_id"], tok, 2, 128, 128, ("", ""), False, None, epoch=epoch, cycle=True)
        assert_same_batches(_ours(out, tok, 2, 128, 128, None, epoch=epoch, cycle=True), theirs)


def test_documents_stored_once(tmp_path, tokenizers, corpora):
    """Each distinct text (inline) or corpus id is one row; the table points every reference at it."""
    out = tmp_path / "out"
    prep("tokenize", corpora["inline"], "-o", out, "--recipe", "retrieval", "--tokenizer", tokenizers["llama3"])
    rows = [json.loads(line) for line in corpora["inline"].read_text().splitlines()]

    def texts(value):
        value = value if isinstance(value, list) else [value]
        return [d["text"] if isinstance(d, dict) else d for d in value]

    distinct = {t for r in rows for t in texts(r["pos_doc"]) + texts(r["neg_doc"])}
    references = sum(len(texts(r["pos_doc"])) + len(texts(r["neg_doc"])) for r in rows)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stats"]["distinct_documents"] == len(distinct) < references == m["stats"]["documents_referenced"]
    assert m["datasets"]["documents"]["documents"] == len(distinct)
    ds = RetrievalDataset(out, negatives=0)
    tok = _hf_tokenizer(tokenizers["llama3"])
    for q, row in enumerate(rows):
        got = [tok.decode(ds.documents[int(d)]) for d in ds.table.negatives_of(q)]
        assert got == texts(row["neg_doc"])
    # the storage target: the output is the distinct documents' and the queries' tokens, their indexes and the table
    itemsize = np.dtype(m["datasets"]["documents"]["dtype"]).itemsize
    files = sum(p.stat().st_size for p in out.iterdir() if p.name != "manifest.json")
    tokens = sum(len(ds.documents[d]) for d in range(len(ds.documents))) + sum(len(ds.queries[q]) for q in range(len(ds.queries)))
    idx = sum(s["idx"]["bytes"] for d in m["datasets"].values() for s in d["shards"])
    assert files == tokens * itemsize + idx + m["stats"]["table_bytes"]
    counts = np.diff(ds.table.negative_offsets)
    assert m["stats"]["fewer_negatives_than"] == {str(n): int((counts < n).sum()) for n in range(1, counts.max() + 2)}


def test_workers_and_units_give_the_same_bytes(tmp_path, tokenizers, corpora):
    big = tmp_path / "big.jsonl"
    big.write_bytes(corpora["inline"].read_bytes() * 30)
    outputs = []
    for name, flags in (("one", ["--workers", "1"]), ("many", ["--workers", "3", "--unit-size", "8k"])):
        prep("tokenize", big, "-o", tmp_path / name, "--recipe", "retrieval", "--tokenizer", tokenizers["llama3"], *flags)
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir()) if p.suffix in (".bin", ".idx", ".npy")})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 9
    m = json.loads((tmp_path / "many" / "manifest.json").read_text())
    assert m["stats"]["queries"] == 40 * 30 and m["stats"]["distinct_documents"] < 200


def test_random_negatives_seeded(tmp_path, tokenizers, corpora):
    out = tmp_path / "out"
    prep("tokenize", corpora["inline"], "-o", out, "--recipe", "retrieval", "--tokenizer", tokenizers["llama3"])
    a = RetrievalDataset(out, negatives=3, negative_sampling="random", seed=5)
    b = RetrievalDataset(out, negatives=3, negative_sampling="random", seed=5)
    rows = [a.document_rows(i).tolist() for i in range(len(a))]
    assert rows == [b.document_rows(i).tolist() for i in range(len(b))]
    for i, r in enumerate(rows):
        negatives = a.table.negatives_of(i).tolist()
        assert set(r[1:]) <= set(negatives)
        if len(negatives) >= 3:
            assert len(set(r[1:])) == 3
    a.set_epoch(1)
    assert [a.document_rows(i).tolist() for i in range(len(a))] != rows
