"""Chat templates that are strict or broken: a template refusing prep's probes does not fail the
run, a template refusing a record makes it a bad record, and a template that can't be used at all
is one line naming it, before any work starts."""

import json

import pytest
from transformers import AutoTokenizer

from helpers import prep, write_jsonl
from test_sft import TEMPLATES, _independent_mask, _read, conversations

# Hand-written, in the manner of Gemma's and Mistral-Instruct's templates: no system turn, and
# user/assistant strictly alternating, each refused with raise_exception.
STRICT = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _without_system(n: int) -> list[dict]:
    return [{"messages": [m for m in c["messages"] if m["role"] != "system"]} for c in conversations(n)]


@pytest.fixture
def strict(tmp_path):
    path = tmp_path / "strict.jinja"
    path.write_text(STRICT)
    return path


def test_a_strict_template_that_refuses_the_probes_tokenizes_fitting_data_with_exact_masks(tmp_path, strict):
    convs = _without_system(24)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
         "--chat-template", strict, "--workers", "2")
    tok = AutoTokenizer.from_pretrained(str(TEMPLATES["smollm2"]))
    tok.chat_template = STRICT
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    samples = _read(tmp_path / "out")
    assert len(samples) == len(convs)
    for (ids, mask), conv in zip(samples, convs):
        assert ids == tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=False)
        assert mask == _independent_mask(tok, conv["messages"], ids, eot)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokenizer"]["mask_method"].startswith("marked render")


def test_a_record_the_template_refuses_is_a_bad_record(tmp_path, strict):
    convs = _without_system(6)
    refused = {"messages": [{"role": "system", "content": "Be brief."}, *convs[0]["messages"]]}
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs[:4] + [refused] + convs[4:])
    args = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--chat-template", strict]
    stopped = prep(*args, "-o", tmp_path / "out", check=False)
    assert stopped.returncode == 2 and stopped.stderr.strip().splitlines() == [
        f"error: {corpus}:5: the chat template refused it (System role not supported)"]
    prep(*args, "-o", tmp_path / "skip", "--skip-invalid")
    stats = json.loads((tmp_path / "skip" / "manifest.json").read_text())["stats"]
    assert stats["skipped"] == {"the chat template refused it": 1} and stats["documents"] == len(convs)


@pytest.mark.parametrize("text,reason", [
    ("{% for m in messages %}{{ m['content'] }}\n{% if %}{% endfor %}", "does not parse (line 2: "),
    ("{{ messages.__class__.__mro__ }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "breaks the sandbox ("),
    ("{{ raise_exception('nothing is accepted') }}", "refuses even a plain user/assistant exchange (nothing is accepted)"),
], ids=["syntax", "sandbox", "refuses-everything"])
def test_an_unusable_template_is_one_line_naming_it_before_any_work(tmp_path, text, reason):
    template = tmp_path / "t.jinja"
    template.write_text(text)
    corpus = write_jsonl(tmp_path / "chat.jsonl", _without_system(4))
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
                  "--chat-template", template, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {template}: the chat template {reason}"), lines[0]
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob(".prep/done/*.json"))  # no unit was run
