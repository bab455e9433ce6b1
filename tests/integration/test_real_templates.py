"""Chat SFT with the chat templates real models ship (tests/data/chat_templates, PROVENANCE.md says
where each came from): ids equal apply_chat_template's, and loss masks equal an independent
computation token by token (tests/chat_cases.py: prefix renders through transformers, HF offsets)."""

import json

import pytest

from chat_cases import CASES, HERE, conversations, end_tokens, hf_tokenizer, independent_mask, tokenizer_dir
from helpers import prep, write_jsonl
from test_sft import _read


@pytest.mark.parametrize("name", list(CASES))
def test_real_template_ids_and_masks_are_exact(tmp_path, name):
    template = HERE / f"{name}.jinja"
    folder = tokenizer_dir(name, tmp_path)
    convs = conversations(CASES[name], 30)
    corpus = write_jsonl(tmp_path / "chat.jsonl", convs)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", folder, "--chat-template", template,
         "--workers", "2")
    tok = hf_tokenizer(folder, template.read_text())
    generation = "{% generation %}" in template.read_text()
    samples = _read(tmp_path / "out")
    assert len(samples) == len(convs)
    for (ids, mask), conv in zip(samples, convs):
        expected = tok.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=generation)
        assert ids == expected["input_ids"]
        if generation:  # the template says what is trained: transformers' assistant mask
            assert mask == expected["assistant_masks"]
        else:
            assert mask == independent_mask(tok, conv["messages"], conv.get("tools"), ids, end_tokens(name))
    tokenizer = json.loads((tmp_path / "out" / "manifest.json").read_text())["tokenizer"]
    assert tokenizer["mask_method"] == "generation blocks" if generation else tokenizer["mask_method"].startswith("marked render")
    assert set(tokenizer["end_of_turn"]) >= set(end_tokens(name)) - {"<|eom_id|>"}  # Llama-3.1's eom: built-in tools only
