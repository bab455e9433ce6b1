"""`--per-turn`: templates that rewrite earlier turns once later ones exist (Qwen3 and gpt-oss drop
the reasoning of turns before the last user message) are trained one sample per assistant turn,
each the conversation up to that turn rendered as the model saw it when generating it, loss on
that turn only; without the flag such records are bad records, never silently trained without
their reasoning."""

import json

import pytest

from helpers import prep, write_jsonl
from chat_cases import HERE, conversations, end_tokens, hf_tokenizer, independent_mask, tokenizer_dir
from test_sft import _read


def _reasoning_everywhere(name: str, n: int) -> list[dict]:
    convs = conversations({"system": True, "tools": name == "qwen3"}, n, seed=3)
    for k, conv in enumerate(convs):
        for i, message in enumerate(conv["messages"]):
            if message["role"] == "assistant" and message.get("content"):
                message["reasoning_content"] = f"Step {k}.{i}: the user wants a line of Botchan."
    return convs


@pytest.mark.parametrize("name", ["qwen3", "gpt-oss"])
def test_per_turn_samples_are_each_turn_as_generated(tmp_path, name):
    template = HERE / f"{name}.jinja"
    folder = tokenizer_dir(name, tmp_path)
    convs = _reasoning_everywhere(name, 24)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    args = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", folder, "--chat-template", template]
    multi = next(k for k, c in enumerate(convs) if sum(m.get("reasoning_content") is not None for m in c["messages"]) > 1)
    refused = prep(*args, "-o", tmp_path / "plain", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: {corpus}:{multi + 1}: the chat template drops this turn's reasoning once later turns exist; "
        "pass --per-turn for one sample per assistant turn, rendered as when it was generated"]

    prep(*args, "-o", tmp_path / "out", "--per-turn", "--workers", "2")
    tok = hf_tokenizer(folder, template.read_text())
    expected = [(conv, i) for conv in convs for i, m in enumerate(conv["messages"]) if m["role"] == "assistant"]
    samples = _read(tmp_path / "out")
    assert len(samples) == len(expected) > len(convs)
    for (ids, mask), (conv, i) in zip(samples, expected):
        messages, tools = conv["messages"][:i + 1], conv.get("tools")
        assert ids == tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False)
        full = independent_mask(tok, messages, tools, ids, end_tokens(name))
        prompt = len(tok(tok.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"])
        assert mask == [0] * prompt + full[prompt:]  # the last turn only
        if messages[-1].get("reasoning_content"):  # trained with its reasoning, as generated
            trained = tok.decode([t for t, m in zip(ids, mask) if m])
            assert messages[-1]["reasoning_content"] in trained
    stats = json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == len(expected) and stats["skipped_total"] == 0


def test_per_turn_is_for_the_chat_recipe(tmp_path):
    corpus = write_jsonl(tmp_path / "i.jsonl", [{"q": "a?", "a": "b"}])
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "instruction", "--columns", "question=q,answer=a",
                  "--tokenizer", tokenizer_dir("smollm2", tmp_path), "--per-turn", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --per-turn is for --recipe chat (one sample per assistant turn), not --recipe instruction"]
