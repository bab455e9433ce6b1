"""SFT records -> token ids and an exact loss mask (1 on the tokens to train on).

Masks come from character spans (prep.recipes.chat) mapped onto the tokens of the whole
rendered text, so the ids are exactly what tokenizing the rendered text gives. A token is
trained when it holds any byte of a trained span (a token straddling a boundary, like " Paris"
after "Answer:", is trained). Token byte offsets come from the vocabulary for byte-level BPE
tokenizers (each id's byte length, summed); other tokenizers use HF offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from prep.recipes.chat import BadConversation, ChatTemplate, instruction_spans, normalize


def _byte_level_alphabet() -> set[str]:
    """The 256 characters GPT-2's ByteLevel uses for bytes: one character is one byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [256 + n for n in range(256 - len(printable))]
    return {chr(c) for c in printable + extra}


def token_byte_lengths(spec_json: str) -> np.ndarray | None:
    """Bytes of text each id stands for, for byte-level BPE without a normalizer; else None."""
    data = orjson.loads(spec_json)
    if data["model"].get("type") != "BPE" or "ByteLevel" not in orjson.dumps(data.get("pre_tokenizer")).decode():
        return None
    if data.get("normalizer") and orjson.dumps(data["normalizer"]) != orjson.dumps({"type": "Sequence", "normalizers": []}):
        return None
    vocab, added = data["model"]["vocab"], data.get("added_tokens", [])
    lengths = np.zeros(max([*vocab.values(), *(t["id"] for t in added)]) + 1, np.int64)
    alphabet = _byte_level_alphabet()
    for token, i in vocab.items():
        if not set(token) <= alphabet:
            return None
        lengths[i] = len(token)
    for token in added:
        lengths[token["id"]] = len(token["content"].encode())
    return lengths


def span_mask(token_starts: np.ndarray, token_ends: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for every token whose [start, end) overlaps a span (all in the same units)."""
    if not spans:
        return np.zeros(len(token_starts), np.uint8)
    bounds = np.asarray(spans, np.int64)
    first = np.searchsorted(token_ends, bounds[:, 0], "right")  # first token ending after the span starts
    stop = np.searchsorted(token_starts, bounds[:, 1], "left")  # first token starting at or after its end
    mask = np.zeros(len(token_starts), np.uint8)
    for a, b in zip(first.tolist(), stop.tolist()):  # a few spans a record: slices beat np.add.at
        mask[a:b] = 1
    return mask


@dataclass
class SFTOptions:
    """The TokenizeConfig fields an SFT recipe reads (see prep.config for their meaning)."""

    recipe: str
    columns: dict
    preset: str
    use_chat_template: bool
    mask_reasoning: bool
    last_turn_only: bool
    max_length: int | None
    overlong: str

    @classmethod
    def from_config(cls, config: dict) -> "SFTOptions":
        return cls(**{name: config[name] for name in cls.__dataclass_fields__})


class SFTRecipe:
    """Per-process state: the chat template, byte lengths, options. `encode` does one batch."""

    def __init__(self, options: SFTOptions, spec_json: str, chat_template: str | None, special_tokens: dict,
                 eod_id: int | None, bos_id: int | None):
        self.options, self.eod_id, self.bos_id = options, eod_id, bos_id
        self.byte_lengths = token_byte_lengths(spec_json)
        self._hf = None
        self.spec_json = spec_json
        needs_template = options.recipe == "chat" or options.use_chat_template
        if needs_template and not chat_template:
            raise BadConversation("the tokenizer has no chat template; pass --chat-template FILE.jinja")
        added = [t["content"] for t in orjson.loads(spec_json).get("added_tokens", [])]
        self.template = ChatTemplate(chat_template, special_tokens, added, options.mask_reasoning,
                                     options.last_turn_only) if needs_template else None

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        o = self.options
        if o.recipe == "chat":
            return self.template.spans(*normalize(record))
        if o.use_chat_template:
            text, _ = instruction_spans(record, o.columns, "default")  # validates the columns
            get = lambda role: record.get(o.columns[role]) if role in o.columns else None  # noqa: E731
            messages = [{"role": "system", "content": get("context") or ""}, {"role": "user", "content": get("question") or ""},
                        {"role": "assistant", "content": get("answer")}]
            return self.template.spans(messages, None)
        return instruction_spans(record, o.columns, "completion" if o.recipe == "completion" else o.preset)

    def offsets(self, text: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bytes | None]:
        """(token starts, token ends, utf-8 text or None): byte offsets, or character offsets from HF."""
        if self.byte_lengths is not None:
            ends = np.cumsum(self.byte_lengths[ids])
            raw = text.encode()
            if len(ends) == 0 or ends[-1] == len(raw):
                return ends - self.byte_lengths[ids], ends, raw
        if self._hf is None:
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_str(self.spec_json)
        offsets = np.array(self._hf.encode(text, add_special_tokens=False).offsets, np.int64).reshape(-1, 2)
        return offsets[:, 0], offsets[:, 1], None

    def mask(self, text: str, spans: list[tuple[int, int]], ids: np.ndarray) -> np.ndarray:
        starts, ends, raw = self.offsets(text, ids)
        if raw is not None and len(raw) != len(text):  # non-ASCII: character spans -> byte spans
            spans = [(len(text[:a].encode()), len(text[:b].encode())) for a, b in spans]
        return span_mask(starts, ends, spans)
