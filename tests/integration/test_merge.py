"""`prep merge`: finished outputs combined give the bytes of one run over their inputs, in order
(Megatron, sharded Megatron, SFT, NanoGPT with and without masks); outputs made differently are
refused naming the field; the merged manifest names what it merged and verifies."""

import json

import pytest

from chat_cases import TEMPLATES, conversations
from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "manifest.json"}


CASES = {
    "megatron": ["--tokenizer", TOKENIZERS / "gpt2"],
    "megatron-sharded": ["--tokenizer", TOKENIZERS / "gpt2", "--shard-size", "20k"],
    "nanogpt": ["--tokenizer", TOKENIZERS / "gpt2", "--format", "nanogpt", "--shard-tokens", "7k"],
    "chat": ["--tokenizer", TEMPLATES["smollm2"], "--recipe", "chat"],
    "chat-nanogpt": ["--tokenizer", TEMPLATES["smollm2"], "--recipe", "chat", "--format", "nanogpt", "--shard-tokens", "3k"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_merging_two_outputs_gives_one_runs_bytes(tmp_path, case):
    chat = case.startswith("chat")
    a = write_jsonl(tmp_path / "a.jsonl", conversations({"system": True}, 30) if chat else botchan_documents(200, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", conversations({"system": True}, 25, seed=4) if chat else botchan_documents(150, seed=2))
    args = CASES[case]
    prep("tokenize", a, "-o", tmp_path / "A", *args)
    prep("tokenize", b, "-o", tmp_path / "B", *args)
    prep("tokenize", a, b, "-o", tmp_path / "one", *args, "--workers", "2")
    result = prep("merge", tmp_path / "A", tmp_path / "B", "-o", tmp_path / "AB")
    assert "merged 2 output(s)" in result.stdout
    assert _files(tmp_path / "AB") == _files(tmp_path / "one") and len(_files(tmp_path / "one")) >= 2
    merged, one = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in ("AB", "one"))
    for key in ("documents", "tokens", "length_histogram"):
        assert merged["stats"][key] == one["stats"][key], key
    assert [m["path"] for m in merged["merged"]] == [str((tmp_path / "A").resolve()), str((tmp_path / "B").resolve())]
    assert [i["path"] for i in merged["inputs"]] == [i["path"] for i in one["inputs"]]
    assert prep("verify", tmp_path / "AB").returncode == 0
    assert not (tmp_path / "AB" / ".prep").exists()


@pytest.mark.parametrize("other,field", [
    (["--tokenizer", TOKENIZERS / "llama3"], "tokenizer.sha256"),
    (["--tokenizer", TOKENIZERS / "gpt2", "--no-eod"], "config.eod"),
    (["--tokenizer", TOKENIZERS / "gpt2", "--format", "nanogpt"], "format"),
    (["--tokenizer", TOKENIZERS / "gpt2", "--shard-size", "20k"], "config.shard_tokens"),
])
def test_outputs_made_differently_are_refused_naming_the_field(tmp_path, other, field):
    corpus = write_jsonl(tmp_path / "a.jsonl", botchan_documents(100))
    prep("tokenize", corpus, "-o", tmp_path / "A", "--tokenizer", TOKENIZERS / "gpt2")
    prep("tokenize", corpus, "-o", tmp_path / "B", *other)
    result = prep("merge", tmp_path / "A", tmp_path / "B", "-o", tmp_path / "AB", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'B'}: made with another ")
    assert f"({field}: " in lines[0] and not (tmp_path / "AB" / "manifest.json").exists()


def test_a_packed_output_or_a_folder_that_is_no_output_is_refused(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", conversations({"system": True}, 10))
    prep("tokenize", corpus, "-o", tmp_path / "P", "--tokenizer", TEMPLATES["smollm2"], "--recipe", "chat", "--pack", "2048")
    result = prep("merge", tmp_path / "P", tmp_path / "P", "-o", tmp_path / "out", check=False)
    assert result.returncode == 2 and "a packed SFT output (packing is global to a run)" in result.stderr
    (tmp_path / "empty").mkdir()
    result = prep("merge", tmp_path / "empty", "-o", tmp_path / "out", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
