"""Byte identity with Megatron-LM's own tools/preprocess_data.py (core_v0.16.1).

The reference files in tests/data/megatron_ref were written once by that script, run as
    tools/preprocess_data.py --input corpus.jsonl --output-prefix REF/<name>
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model TOK [--append-eod] --json-keys ...
The corpus holds empty, whitespace-only, non-ASCII, CRLF and literal special-token documents.
"""

import pytest

from helpers import REF, TOKENIZERS, prep

CASES = [
    ("gpt2_eod", "gpt2", ["--text-key", "text", "--text-key", "title"], ["text", "title"]),
    ("gpt2_noeod", "gpt2", ["--no-eod"], ["text"]),
    ("llama3_eod", "llama3", [], ["text"]),
    ("smollm2_eod", "smollm2-135m-instruct", [], ["text"]),
]


@pytest.mark.parametrize("backend", ["auto", "hf"])
@pytest.mark.parametrize("name,tokenizer,options,keys", CASES, ids=[c[0] for c in CASES])
def test_tokenize_gives_megatron_preprocess_data_bytes(tmp_path, name, tokenizer, options, keys, backend):
    out = tmp_path / "out"
    prep("tokenize", REF / "corpus.jsonl", "-o", out, "--tokenizer", TOKENIZERS / tokenizer,
         "--backend", backend, "--workers", "2", "--unit-size", "16k", *options)
    for key in keys:
        for suffix in (".bin", ".idx"):
            ours = (out / f"{key}_document{suffix}").read_bytes()
            theirs = (REF / f"{name}_{key}_document{suffix}").read_bytes()
            assert ours == theirs, f"{key}{suffix} differs from Megatron-LM's output"
