"""Cases a QA pass on unseen inputs found: reasoning that also appears elsewhere in the render,
--per-turn over tool calls with reasoning and later turns, DeepSeek-V3's tool calls (null
content), an end-of-turn token's text inside tool-call arguments, a template that writes no
assistant content, a missing or empty --chat-template, and the summary's token count."""

import json

import pytest
from transformers import AutoTokenizer

from chat_cases import HERE, TEMPLATES, as_generated, end_tokens, hf_tokenizer, last_turn_mask, tokenizer_dir
from helpers import prep, write_jsonl
from test_sft import _read

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def _tokenize(tmp_path, name, rows, *extra, check=True):
    corpus = write_jsonl(tmp_path / "in.jsonl", rows)
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", tokenizer_dir(name, tmp_path),
                  "--chat-template", HERE / f"{name}.jinja", *extra, check=check)
    return corpus, result


@pytest.mark.parametrize("reasoning,user", [("The answer is 4.", "thanks"), ("think step by step", "Please think step by step.")])
def test_dropped_reasoning_is_refused_even_when_its_text_appears_elsewhere(tmp_path, reasoning, user):
    rows = [{"messages": [{"role": "user", "content": "What is 2+2?"},
                          {"role": "assistant", "content": "The answer is 4.", "reasoning_content": reasoning},
                          {"role": "user", "content": user}, {"role": "assistant", "content": "welcome"}]}]
    corpus, result = _tokenize(tmp_path, "qwen3", rows, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {corpus}:1: the chat template drops this turn's reasoning once later turns exist; "
        "pass --per-turn for one sample per assistant turn, rendered as when it was generated"]


@pytest.mark.parametrize("name", ["qwen3", "gpt-oss"])
def test_per_turn_over_a_tool_call_with_reasoning_and_later_turns(tmp_path, name):
    key = "thinking" if name == "gpt-oss" else "reasoning_content"
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", key: "Need weather data.",
                 "tool_calls": [{"type": "function", "id": "call1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_call_id": "call1", "content": "12C"},
                {"role": "assistant", "content": "Paris is at 12C."},
                {"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "You are welcome."}]
    _tokenize(tmp_path, name, [{"messages": messages, "tools": WEATHER}], "--per-turn")
    tok = hf_tokenizer(tokenizer_dir(name, tmp_path), (HERE / f"{name}.jinja").read_text())
    samples = _read(tmp_path / "out")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(samples) == len(turns)
    for (ids, mask), i in zip(samples, turns):
        sub = messages[:i + 1]
        text = as_generated(tok, sub, WEATHER)
        prompt = tok.apply_chat_template(messages[:i], tools=WEATHER, add_generation_prompt=True, tokenize=False)
        assert (ids, mask) == last_turn_mask(tok, text, prompt, sub[-1], end_tokens(name))
        if name == "qwen3":  # its renders before a turn are prefixes of the turn's: the whole render
            assert text == tok.apply_chat_template(sub, tools=WEATHER, tokenize=False)
    assert "Need weather data." in tok.decode([t for t, m in zip(*samples[0]) if m])
    assert "Need weather data." in tok.decode(samples[1][0])  # the final answer saw the call's reasoning


def test_deepseek_v3_tool_calls_with_null_content(tmp_path):
    """DeepSeek-V3's template writes tool calls only when the content is null, and concatenates
    the arguments as a string: the record's JSON string, exactly as written."""
    rows = [{"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"type": "function", "id": "a", "function": {"name": "f", "arguments": "{\"k\": 1}"}}]},
                          {"role": "tool", "tool_call_id": "a", "content": "r"}, {"role": "assistant", "content": "done"}]}]
    _tokenize(tmp_path, "deepseek-v3", rows)
    (ids, mask), = _read(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(TEMPLATES["deepseek"]))
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert '{"k": 1}' in tok.decode(ids) and "f\n```json\n{\"k\": 1}\n```" in trained and trained.endswith("done<｜end▁of▁sentence｜>")


@pytest.mark.parametrize("name,eot", [("qwen2.5", "<|im_end|>"), ("llama3.1", "<|eot_id|>")])
def test_an_end_of_turn_text_inside_tool_arguments_does_not_end_the_turn(tmp_path, name, eot):
    messages = [{"role": "user", "content": "s"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "id": "c", "function": {"name": "get_weather", "arguments": {"city": f"a {eot} b"}}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}, {"role": "assistant", "content": "done"}]
    _tokenize(tmp_path, name, [{"messages": messages, "tools": WEATHER}])
    (ids, mask), = _read(tmp_path / "out")
    tok = hf_tokenizer(tokenizer_dir(name, tmp_path), (HERE / f"{name}.jinja").read_text())
    first = [t for t, m in zip(ids, mask) if m]
    trained = tok.decode(first)
    assert trained.count(eot) == 3  # the literal in the arguments, the call's end, and the answer's
    assert f'a {eot} b"' in trained and trained.endswith(f"done{eot}")


def test_a_template_that_writes_no_assistant_content_is_one_line(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}")
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    corpus = write_jsonl(tmp_path / "in.jsonl", rows)
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
                  "--chat-template", template, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {template}: the chat template does not write the assistant's content (nothing to train on)"]


@pytest.mark.parametrize("content,reason", [(None, "--chat-template {t}: no such file"), ("  \n", "{t}: the chat template file is empty")])
def test_a_missing_or_empty_chat_template_is_one_line(tmp_path, content, reason):
    template = tmp_path / "t.jinja"
    if content is not None:
        template.write_text(content)
    corpus = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
                  "--chat-template", template, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: " + reason.format(t=template)]


def test_the_summary_counts_sft_tokens_once(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]} for i in range(20)]
    corpus = write_jsonl(tmp_path / "in.jsonl", rows)
    out = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"]).stdout
    tokens = json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]["tokens"]
    assert f"tokens      {tokens:,}" in out and f", {tokens:,} tokens in" in out
