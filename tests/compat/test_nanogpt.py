"""NanoGPT shards: exact tokens, headers and BOS index, read by NeMo AutoModel's own reader."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders.formats import nanogpt

import nemo_automodel.components.datasets.llm.nanogpt_dataset as automodel  # noqa: E402


def _expected_stream(tokenizer: str, docs: list[dict], bos: int) -> list[int]:
    """Independent computation: BOS then HF tokenizers' ids, for every non-empty document."""
    reference = Tokenizer.from_file(str(TOKENIZERS / tokenizer / "tokenizer.json"))
    stream = []
    for encoding in reference.encode_batch([d["text"] for d in docs], add_special_tokens=False):
        if encoding.ids:
            stream += [bos] + encoding.ids
    return stream


@pytest.mark.parametrize("tokenizer,bos,header,dtype", [
    ("gpt2", 50256, "current", np.uint16),
    ("gpt2", 50256, "legacy", np.uint16),
    ("llama3", 128000, "current", np.uint32),
])
def test_shards_hold_bos_and_ids_and_automodel_reads_them(tmp_path, tokenizer, bos, header, dtype):
    docs = botchan_documents(600, seed=4) + [{"text": ""}]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / tokenizer, "--format", "nanogpt",
         "--nanogpt-header", header, "--shard-tokens", "40k", "--workers", "2", "--unit-size", "64k")
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [out / s["path"] for s in manifest["datasets"]["text"]["shards"]]
    assert len(shards) > 2 and all(s["tokens"] == 40 * 1024 for s in manifest["datasets"]["text"]["shards"][:-1])

    stream = []
    for path in shards:
        head = np.fromfile(path, np.int32, 256)
        assert head[0] == (20240520 if header == "legacy" else 278895051) and head[1] == 1
        assert head[3] == (0 if header == "legacy" else np.dtype(dtype).itemsize)
        theirs = automodel.load_bin_shard(str(path)).numpy()
        assert theirs.dtype == dtype and head[2] == len(theirs)
        assert np.array_equal(nanogpt.read_shard(path), theirs)
        assert np.array_equal(nanogpt.read_bos_index(path), np.flatnonzero(theirs == bos))
        stream += theirs.tolist()
    assert stream == _expected_stream(tokenizer, docs, bos)

    aligned = automodel.NanogptDataset([str(p) for p in shards], seq_len=64, bos_token=bos, align_to_bos=True)
    samples = [s for _, s in zip(range(200), iter(aligned))]
    assert len(samples) == 200 and all(s["input_ids"][0] == bos for s in samples)
    plain = iter(automodel.NanogptDataset([str(p) for p in shards], seq_len=64))
    first = next(plain)
    assert first["input_ids"] == stream[:64] and first["labels"] == stream[1:65]
    assert "OK" in prep("verify", out).stdout


def test_legacy_header_refuses_a_vocabulary_over_uint16(tmp_path, corpus):
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "llama3", "--format", "nanogpt",
                  "--nanogpt-header", "legacy", check=False)
    assert result.returncode == 2 and "uint16" in result.stderr and "Traceback" not in result.stderr


def test_overwrite_leaves_only_the_new_shards(tmp_path, corpus):
    """--overwrite removes the earlier output's shards and .bos.idx files, NanoGPT's as Megatron's:
    loaders that glob text_*.bin must not find stale ones."""
    out = tmp_path / "out"
    args = ["tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "smollm2-135m-instruct", "--format", "nanogpt"]
    prep(*args, "--shard-tokens", "100k")
    assert len(list(out.glob("text_*.bin"))) > 2
    prep(*args, "--shard-tokens", "100M", "--overwrite")
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {e["path"] for s in manifest["datasets"]["text"]["shards"] for e in (s["bin"], s.get("bos_idx")) if e}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json"}
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "smollm2-135m-instruct", "--overwrite")  # to megatron
    assert {p.name for p in out.iterdir()} == {"text_document.bin", "text_document.idx", "manifest.json"}
