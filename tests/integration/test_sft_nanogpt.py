"""SFT into NanoGPT shards: the token stream of the Megatron SFT output, cut into shards, with a
uint8 `.mask` sidecar per shard holding the same loss mask; `loaders.nanogpt` gives labels of
-100 wherever the next token is not trained; `prep verify` checks the sidecars."""

import json

import numpy as np
import pytest

from helpers import TOKENIZERS, prep, write_jsonl
from loaders.formats import nanogpt
from loaders.nanogpt import NanoGPTDataset
from test_sft import TEMPLATES, _read, conversations


def _stream(out):
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["datasets"]["tokens"]["shards"]
    tokens = np.concatenate([np.asarray(nanogpt.read_shard(out / s["path"])) for s in shards])
    masks = np.concatenate([np.asarray(nanogpt.read_mask(out / s["path"])) for s in shards])
    return manifest, shards, tokens, masks


@pytest.mark.parametrize("name", ["smollm2", "llama3"])
def test_chat_nanogpt_shards_hold_the_megatron_outputs_tokens_and_masks(tmp_path, name):
    convs = conversations(60)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    args = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", TEMPLATES[name], "--workers", "2", "--unit-size", "16k"]
    prep(*args, "-o", tmp_path / "megatron")
    prep(*args, "-o", tmp_path / "nano", "--format", "nanogpt", "--shard-tokens", "3000")
    reference = _read(tmp_path / "megatron")  # exact against an independent mask (test_sft)
    manifest, shards, tokens, masks = _stream(tmp_path / "nano")
    assert len(shards) > 2 and all(s["mask"]["bytes"] == s["tokens"] for s in shards)
    assert list(manifest["datasets"]) == ["tokens"] and manifest["stats"]["documents"] == len(convs)
    bos = manifest["tokenizer"]["bos_id"]
    # every conversation starts with BOS exactly once: the template's own (Llama-3) or one prepended (SmolLM2's BOS is <|im_start|>)
    expected_ids = np.concatenate([ids if ids[0] == bos else [bos, *ids] for ids, _ in reference])
    expected_mask = np.concatenate([mask if ids[0] == bos else [0, *mask] for ids, mask in reference])
    assert np.array_equal(tokens, expected_ids) and np.array_equal(masks, expected_mask)
    megatron_stats = json.loads((tmp_path / "megatron" / "manifest.json").read_text())["stats"]
    assert megatron_stats["tokens"] == sum(len(ids) for ids, _ in reference) and manifest["stats"]["tokens"] == len(tokens)
    positions = np.concatenate([nanogpt.read_bos_index(tmp_path / "nano" / s["path"]) + sum(t["tokens"] for t in shards[:k])
                                for k, s in enumerate(shards)])
    assert np.array_equal(positions, np.flatnonzero(tokens == bos))
    assert prep("verify", tmp_path / "nano").returncode == 0

    ds = NanoGPTDataset(tmp_path / "nano", seq_len=64)
    offsets = np.concatenate([[0], np.cumsum([s["tokens"] for s in shards])])
    for i in range(len(ds)):
        item, start = ds[i], int(ds.starts[i]) + int(offsets[ds.shard_of[i]])
        window, trained = tokens[start:start + 65].astype(np.int64), masks[start + 1:start + 65].astype(bool)
        assert item["input_ids"].tolist() == window[:-1].tolist()
        assert item["labels"].tolist() == np.where(trained, window[1:], -100).tolist()
    assert sum(int((ds[i]["labels"] != -100).sum()) for i in range(len(ds))) > 0


def test_instruction_nanogpt_trains_the_answer_and_its_eos(tmp_path):
    rows = [{"context": f"Context {i}.", "question": "Say a word?", "answer": f"Word{i}"} for i in range(30)]
    corpus = write_jsonl(tmp_path / "inst.jsonl", rows)
    args = ["tokenize", corpus, "--recipe", "instruction", "--columns", "context=context,question=question,answer=answer",
            "--tokenizer", TOKENIZERS / "gpt2"]
    prep(*args, "-o", tmp_path / "megatron", "--bos")
    prep(*args, "-o", tmp_path / "nano", "--format", "nanogpt")
    reference = _read(tmp_path / "megatron")
    manifest, _, tokens, masks = _stream(tmp_path / "nano")
    assert manifest["config"]["eod"] and manifest["config"]["bos"]
    assert np.array_equal(tokens, np.concatenate([ids for ids, _ in reference]))
    assert np.array_equal(masks, np.concatenate([mask for _, mask in reference]))
    eos = manifest["tokenizer"]["eod_id"]
    assert all(mask[-1] == 1 and ids[-1] == eos for ids, mask in reference)


def test_verify_names_a_damaged_or_missing_mask_sidecar(tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", conversations(20))
    out = tmp_path / "nano"
    prep("tokenize", corpus, "-o", out, "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--format", "nanogpt")
    sidecar = out / "tokens_000000.mask"
    data = bytearray(sidecar.read_bytes())
    data[len(data) // 2] ^= 1
    sidecar.write_bytes(bytes(data))
    result = prep("verify", out, check=False)
    assert result.returncode == 1 and f"{sidecar}: checksum differs from the manifest" in result.stdout + result.stderr
    sidecar.unlink()
    result = prep("verify", out, check=False)
    assert result.returncode == 1 and f"{sidecar}: missing" in result.stdout + result.stderr


def test_pack_with_nanogpt_is_one_line(tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", conversations(4))
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
                  "--format", "nanogpt", "--pack", "512", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --pack is for --format megatron; NanoGPT shards are one token stream (the loaders cut windows from it)"]
