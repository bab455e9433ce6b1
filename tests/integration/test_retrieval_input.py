"""--recipe retrieval on bad input (one line naming the file and line, exit 2; or skipped and
counted), CSV/TSV inputs, storage caps, and the rank-sharded, resumable dataloader."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT, TOKENIZERS, prep, write_jsonl
from loaders.retrieval import RetrievalDataset
from retrieval_data import inline_rows, write_corpus_id

TOK = TOKENIZERS / "gpt2"


def _tokenize(inputs, out, *flags, check=True):
    return prep("tokenize", inputs, "-o", out, "--recipe", "retrieval", "--tokenizer", TOK, *flags, check=check)


def _one_line_error(result, where: str, reason: str):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {where}") and reason in lines[0], lines[0]


GOOD = {"query": "q", "pos_doc": "a document", "neg_doc": ["another"]}
BAD_ROWS = [
    ({"query": "q", "neg_doc": ["x"]}, "no positive document"),
    ({"query": "q", "pos_doc": [], "neg_doc": ["x"]}, "no positive document"),
    ({"query": "  ", "pos_doc": "a", "neg_doc": []}, "empty query"),
    ({"pos_doc": "a", "neg_doc": []}, "missing key 'query'"),
    ({"query": "q", "pos_doc": "", "neg_doc": []}, "empty document"),  # gpt2 adds no special token: no tokens at all
    ({"query": "q", "pos_doc": [{"id": "7"}], "neg_doc": []}, "names an id, but this file names no corpus"),
    ({"query": "q", "pos_doc": [["nested"]], "neg_doc": []}, "a document is list"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_bad_inline_row_is_one_line_then_skipped(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, row, GOOD])
    _one_line_error(_tokenize(path, tmp_path / "out", check=False), f"{path}:3:", reason)
    _tokenize(path, tmp_path / "out", "--skip-invalid")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["stats"]["queries"] == 3 and m["stats"]["skipped_total"] == 1
    assert m["stats"]["skipped_examples"][0].startswith(f"{path}:3: ")


def test_an_empty_passage_with_a_prefix_is_a_document(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "pos_doc": "", "neg_doc": []}])
    _tokenize(path, tmp_path / "out", "--passage-prefix", "passage:")
    from tokenizers import Tokenizer

    want = Tokenizer.from_file(str(TOK / "tokenizer.json")).encode("passage: ").ids  # AutoModel's prefix + " " + ""
    assert RetrievalDataset(tmp_path / "out", negatives=0)[0]["docs"][0].tolist() == want


@pytest.fixture
def corpus_id(tmp_path):
    return write_corpus_id(tmp_path / "cid", n_queries=6)


def _edit(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))
    return path


def _line_of(path, text):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_dangling_corpus_id_names_the_id_and_the_corpus(tmp_path, corpus_id):
    _edit(corpus_id, lambda v: v["data"][2]["neg_doc"].append({"id": "wiki-9999"}))
    line = _line_of(corpus_id, '"question_id": "q2"') - 1  # the record's opening brace
    result = _tokenize(corpus_id, tmp_path / "out", check=False)
    _one_line_error(result, f"{corpus_id}:{line}:", "document id 'wiki-9999' is not in corpus 'wiki'")
    _tokenize(corpus_id, tmp_path / "out", "--skip-invalid")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]["queries"] == 5


def test_unknown_corpus(tmp_path, corpus_id):
    _edit(corpus_id, lambda v: v["data"][0].update(corpus_id="papers"))
    _one_line_error(_tokenize(corpus_id, tmp_path / "out", check=False), f"{corpus_id}:", "corpus_id 'papers' is not among the file's corpora (news, wiki)")


@pytest.mark.parametrize("damage,reason", [
    (lambda folder: shutil.rmtree(folder), "does not exist"),
    (lambda folder: (folder / "merlin_metadata.json").unlink(), "has no merlin_metadata.json"),
])
def test_missing_corpus_folder_or_metadata(tmp_path, corpus_id, damage, reason):
    damage(corpus_id.parent / "corpora" / "news")
    line = _line_of(corpus_id, '"path": "corpora/news"')
    _one_line_error(_tokenize(corpus_id, tmp_path / "out", check=False), f"{corpus_id}:{line}:", reason)
    _tokenize(corpus_id, tmp_path / "out", "--skip-invalid")  # the corpus skipped, and the queries that need it
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["stats"]["queries"] == 4 and m["stats"]["skipped_total"] == 3


def test_instruction_needs_corpus_metadata(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD])
    _one_line_error(_tokenize(path, tmp_path / "out", "--use-dataset-instruction", check=False), f"{path}:1:",
                    "--use-dataset-instruction: no corpus metadata for corpus_id None")


@pytest.mark.parametrize("delimiter,suffix", [("\t", "tsv"), (",", "csv")])
def test_delimited_inputs_equal_jsonl(tmp_path, delimiter, suffix):
    """A cell holding a JSON list is a list of documents; one holding text is one document."""
    rows = inline_rows(20)
    flat = [{"query": r.get("query", r.get("question")),
             "pos_doc": json.dumps(r["pos_doc"]) if isinstance(r["pos_doc"], (list, dict)) else r["pos_doc"],
             "neg_doc": json.dumps(r["neg_doc"], ensure_ascii=False)} for r in rows]
    for r in flat:
        if r["pos_doc"].startswith("{"):
            r["pos_doc"] = json.loads(r["pos_doc"])["text"]
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{**r, "pos_doc": json.loads(r["pos_doc"]) if r["pos_doc"].startswith("[") else r["pos_doc"],
                                                "neg_doc": json.loads(r["neg_doc"])} for r in flat])
    table = tmp_path / f"a.{suffix}"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["query", "pos_doc", "neg_doc"], delimiter=delimiter)
        writer.writeheader()
        writer.writerows(flat)
    _tokenize(jsonl, tmp_path / "j")
    _tokenize(table, tmp_path / "t")
    for name in ("queries_document.bin", "documents_document.bin", "table_negatives.npy", "table_positives.npy"):
        assert (tmp_path / "j" / name).read_bytes() == (tmp_path / "t" / name).read_bytes(), name


def test_storage_caps(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", inline_rows(20))
    _tokenize(path, tmp_path / "full")
    _tokenize(path, tmp_path / "cap", "--query-max-length", "8", "--doc-max-length", "16")
    full, cap = RetrievalDataset(tmp_path / "full", 2, 8, 16), RetrievalDataset(tmp_path / "cap", 2, 8, 16)
    for i in range(len(full)):
        a, b = full[i], cap[i]
        assert a["query"].tolist() == b["query"].tolist() and [d.tolist() for d in a["docs"]] == [d.tolist() for d in b["docs"]]
    assert json.loads((tmp_path / "cap" / "manifest.json").read_text())["stats"]["truncated"] > 0
    with pytest.raises(ValueError, match="stores at most 16 tokens"):
        RetrievalDataset(tmp_path / "cap", 2, 8, 17)


def test_dataloader_shards_ranks_and_resumes(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", inline_rows(37))
    _tokenize(path, tmp_path / "out")
    ds = RetrievalDataset(tmp_path / "out", negatives=2, q_max_len=32, p_max_len=64)
    queries = {}
    for rank in range(2):
        for batch in ds.dataloader(batch_size=4, rank=rank, world_size=2, seed=3, pad_token_id=0):
            assert batch["d_input_ids"].shape[0] == 3 * batch["q_input_ids"].shape[0]
            for row, mask in zip(batch["q_input_ids"], batch["q_attention_mask"]):
                queries.setdefault(tuple(row[mask > 0].tolist()), []).append(rank)
    assert sum(map(len, queries.values())) == 38  # 37 queries, one repeated to even out the ranks
    assert {tuple(ds[i]["query"].tolist()) for i in range(len(ds))} == set(queries)

    assert ds.pad_token_id == 50256  # gpt2 has no pad token: its EOS, as `tok.pad_token = tok.eos_token` gives
    loader = ds.dataloader(batch_size=4, seed=3)
    whole = [b["q_input_ids"] for _, b in zip(range(7), iter(loader))]
    loader = ds.dataloader(batch_size=4, seed=3, pad_token_id=0)
    it = iter(loader)
    first = [next(it)["q_input_ids"] for _ in range(3)]
    state = loader.state_dict()
    resumed = ds.dataloader(batch_size=4, seed=3, pad_token_id=0)
    resumed.load_state_dict(state)
    rest = [b["q_input_ids"] for _, b in zip(range(4), iter(resumed))]
    assert all(torch.equal(a, b) for a, b in zip(first + rest, whole))
    assert np.array_equal(loader.state_dict()["epoch"], 0)


def test_inline_and_corpus_id_inputs_in_one_run(tmp_path):
    """AutoModel can't concatenate the two schemas, nor int and str question ids; one prep run can."""
    cid = write_corpus_id(tmp_path / "cid", n_queries=6)
    _edit(cid, lambda v: [row.update(question_id=i) for i, row in enumerate(v["data"]) if i % 2])  # ints among strings
    inline = write_jsonl(tmp_path / "cid" / "z_inline.jsonl", inline_rows(5))
    _tokenize(cid, tmp_path / "a")
    _tokenize(inline, tmp_path / "b")
    prep("tokenize", inline, cid, "-o", tmp_path / "both", "--recipe", "retrieval", "--tokenizer", TOK)  # in sorted path order
    parts = [RetrievalDataset(tmp_path / name, negatives=3, q_max_len=64, p_max_len=64) for name in ("a", "b")]
    both = RetrievalDataset(tmp_path / "both", negatives=3, q_max_len=64, p_max_len=64)
    items = [p[i] for p in parts for i in range(len(p))]
    assert len(both) == len(items) == 11
    for i, want in enumerate(items):
        got = both[i]
        assert got["query"].tolist() == want["query"].tolist()
        assert [d.tolist() for d in got["docs"]] == [d.tolist() for d in want["docs"]]
        assert got["doc_ids"].tolist() == want["doc_ids"].tolist()


def test_resume_after_kill_gives_the_same_bytes(tmp_path):
    """kill -9 of the whole run (workers too) after 3 units, rerun: the bytes of an uninterrupted run."""
    path = write_jsonl(tmp_path / "train.jsonl", inline_rows(600))
    args = [path, "--recipe", "retrieval", "--tokenizer", TOK, "--unit-size", "64k", "--workers", "2"]
    prep("tokenize", *args, "-o", tmp_path / "whole")
    killed = subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", *map(str, args), "-o", str(tmp_path / "k")], cwd=ROOT,
                            env={**os.environ, "PREP_TEST_KILL_AFTER_UNITS": "3"}, start_new_session=True, capture_output=True)
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "k" / "manifest.json").exists()
    assert "resumed" in prep("tokenize", *args, "-o", tmp_path / "k").stdout
    names = [p.name for p in (tmp_path / "whole").iterdir() if p.suffix in (".bin", ".idx", ".npy")]
    assert len(names) == 9
    assert all((tmp_path / "whole" / n).read_bytes() == (tmp_path / "k" / n).read_bytes() for n in names)
