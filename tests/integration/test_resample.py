"""`prep verify --resample N`: a seeded sample of source records re-tokenized with HF tokenizers
and the output's recipe gives the stored ids and masks; a stored token that differs (as a backend
bug would write it, checksums updated) is named by file:line and document; outputs whose
documents are not their records one for one are refused in one line."""

import json
import re

import numpy as np

from chat_cases import TEMPLATES, conversations
from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders.formats.indexed import IndexedDataset
from prep.pipeline.checksum import file_checksum


def test_text_and_chat_outputs_resample_clean(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", botchan_documents(120, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", botchan_documents(80, seed=2))
    prep("tokenize", a, b, "-o", tmp_path / "text", "--tokenizer", TOKENIZERS / "gpt2", "--workers", "2")
    result = prep("verify", tmp_path / "text", "--resample", "200")
    assert "200 resampled record(s) tokenize to the stored ids and masks" in result.stdout
    chats = write_jsonl(tmp_path / "c.jsonl", conversations({"system": True}, 30))
    prep("tokenize", chats, "-o", tmp_path / "chat", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"])
    shown = prep("verify", tmp_path / "chat", "--resample", "12", "--seed", "3").stdout
    assert "12 resampled record(s)" in shown
    coverage = dict(re.findall(r"(\w+) ([\d.]+)% of", shown.split("mask coverage by role")[1]))
    assert coverage["assistant"] == "100.0" and coverage["user"] == "0.0" and coverage["system"] == "0.0", shown


def test_parquet_and_saved_dataset_outputs_resample_clean(tmp_path):
    """Their units are row groups and shards, not byte ranges: resample reads every one."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    documents = botchan_documents(150, seed=4)
    pq.write_table(pa.table({"text": [d["text"] for d in documents]}), tmp_path / "a.parquet", row_group_size=40)
    datasets.Dataset.from_list(documents[:90]).save_to_disk(tmp_path / "saved", num_shards=3)
    prep("tokenize", tmp_path / "a.parquet", tmp_path / "saved", "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2",
         "--unit-size", "16k")
    result = prep("verify", tmp_path / "out", "--resample", "240")
    assert "240 resampled record(s) tokenize to the stored ids and masks" in result.stdout, result.stdout + result.stderr


def test_a_stored_token_that_differs_is_named(tmp_path):
    corpus = write_jsonl(tmp_path / "a.jsonl", botchan_documents(60, seed=1))
    out = tmp_path / "text"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    ds = IndexedDataset(out / "text_document")
    target = 37
    tokens = np.memmap(out / "text_document.bin", dtype=ds.dtype, mode="r+")
    start = int(ds.sequence_lengths[:target].sum())  # one sequence a document
    tokens[start + 2] = (int(tokens[start + 2]) + 1) % 50000
    tokens.flush()
    del tokens
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["datasets"]["text"]["shards"][0]["bin"]["xxh3_128"] = file_checksum(out / "text_document.bin")
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = prep("verify", out, "--resample", "60", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines == [
        f"FAIL {corpus}:{target + 1}: document {target}: the text ids differ from a fresh tokenization at position 2 "
        f"({ds.sequence_lengths[target]} stored, {ds.sequence_lengths[target]} fresh)", f"error: {out}: 1 problem(s)"]


def test_outputs_whose_documents_are_not_their_records_are_refused(tmp_path):
    chats = write_jsonl(tmp_path / "c.jsonl", conversations({"system": True}, 20))
    prep("tokenize", chats, "-o", tmp_path / "packed", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--pack", "2048")
    result = prep("verify", tmp_path / "packed", "--resample", "5", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'packed'}: --resample needs document i to be record i: not a packed, --per-turn or custom-recipe output"]
