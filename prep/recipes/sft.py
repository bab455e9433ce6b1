"""What the SFT recipes share: rendered text + trained spans -> token ids and an exact loss mask.

The recipes (chat, instruction, completion) each render a record to text and the character
spans to train on; this base tokenizes the batch once and maps the spans onto the tokens of the whole
rendered text, so the ids are exactly what tokenizing the rendered text gives. A token is
trained when it holds any byte of a trained span (a token straddling a boundary, like " Paris"
after "Answer:", is trained). Token byte offsets come from the vocabulary for byte-level BPE
tokenizers (each id's byte length, summed); other tokenizers use HF offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from prep.recipes.base import Recipe
from prep.recipes.templates import BadConversation, ChatTemplate


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
    """The TokenizeConfig fields an SFT recipe reads (see prep.tokenize.config for their meaning)."""

    recipe: str
    columns: dict
    preset: str
    use_chat_template: bool
    mask_reasoning: bool
    last_turn_only: bool
    per_turn: bool
    mask_convention: str
    max_length: int | None
    overlong: str

    @classmethod
    def from_config(cls, config: dict) -> "SFTOptions":
        return cls(**{name: config[name] for name in cls.__dataclass_fields__})


class SFTRecipe(Recipe):
    """Per-process state: the chat template (compiled once), byte lengths, options. Subclasses
    say how a record renders (`render`); `encode_batch` tokenizes, masks and writes a batch."""

    loss_mask = True

    def __init__(self, job: dict, tokenizer_json: str):
        super().__init__(job, tokenizer_json)
        self.options = options = SFTOptions.from_config(job["config"])
        self.eod_id, self.bos_id = job["eod_id"], job["bos_id"]
        self.byte_lengths = token_byte_lengths(tokenizer_json)
        self._hf = None
        self.spec_json = tokenizer_json
        chat_template = job["chat_template"]
        needs_template = self.needs_template(options)
        if needs_template and not chat_template:
            raise BadConversation("the tokenizer has no chat template; pass --chat-template FILE.jinja")
        added = [t["content"] for t in orjson.loads(tokenizer_json).get("added_tokens", [])]
        c = job["config"]
        source = c.get("chat_template") or f"{c.get('tokenizer')} (its chat template)"
        self.template = ChatTemplate(chat_template, job["special_tokens_map"], added, options.mask_reasoning,
                                     options.last_turn_only, source, options.mask_convention) if needs_template else None

    def source_keys(self) -> list[str] | None:
        return list(self.options.columns.values()) if self.options.columns else None

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        """(rendered text, character spans to train on) of one record; BadConversation if it can't be."""
        raise NotImplementedError

    def samples(self, record: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        """The training samples of one record: (text, spans) each; one unless a recipe splits records."""
        return [self.render(record)]

    def hf_tokenizer(self):
        """HF tokenizers' Tokenizer of this job (built on first use: most batches never need it)."""
        if self._hf is None:
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_str(self.spec_json)
        return self._hf

    def offsets(self, text: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bytes | None]:
        """(token starts, token ends, utf-8 text or None): byte offsets, or character offsets from HF."""
        if self.byte_lengths is not None:
            ends = np.cumsum(self.byte_lengths[ids])
            raw = text.encode()
            if len(ends) == 0 or ends[-1] == len(raw):
                return ends - self.byte_lengths[ids], ends, raw
        offsets = np.array(self.hf_tokenizer().encode(text, add_special_tokens=False).offsets, np.int64).reshape(-1, 2)
        return offsets[:, 0], offsets[:, 1], None

    def encode_samples(self, rendered: list[tuple[str, list]], encoder) -> list:
        """Each rendered sample's tokens as `sample_and_mask` takes them: by default its ids, from
        one call to the encoder for the batch."""
        ids, offsets = encoder.encode([text for text, _ in rendered])
        return [ids[offsets[k]:offsets[k + 1]] for k in range(len(rendered))]

    def sample_and_mask(self, text: str, spans: list[tuple[int, int]], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One sample's ids and loss mask (before prep's own BOS / EOD)."""
        return ids, self.mask(text, spans, ids)

    def mask(self, text: str, spans: list[tuple[int, int]], ids: np.ndarray) -> np.ndarray:
        starts, ends, raw = self.offsets(text, ids)
        if raw is not None and len(raw) != len(text):  # non-ASCII: character spans -> byte spans
            spans = [(len(text[:a].encode()), len(text[:b].encode())) for a, b in spans]
        return span_mask(starts, ends, spans)

    def encode_batch(self, records, locate, path, rejects, writers, encoder, counts) -> int:
        """Render, tokenize (one call for the batch) and mask the records; BOS/EOD added with their
        mask (0 and 1); overlong samples truncated or dropped as --overlong says."""
        options = self.options
        rendered, where = [], []
        for j, record in enumerate(records):
            try:
                samples = self.samples(record)
            except BadConversation as exc:  # a TemplateError (the template's own fault) goes on up
                rejects.add(path, lambda j=j: locate(j), str(exc))
                continue
            rendered += samples
            where += [j] * len(samples)
        encoded = self.encode_samples(rendered, encoder)
        tokens, masks, lengths = [], [], []
        for k, (text, spans) in enumerate(rendered):
            sample, mask = self.sample_and_mask(text, spans, encoded[k])
            if self.bos_id is not None and not (len(sample) and sample[0] == self.bos_id):  # a template's own BOS is kept, not doubled
                sample, mask = np.concatenate([[self.bos_id], sample]), np.concatenate([[0], mask]).astype(np.uint8)
            if self.eod_id is not None:
                sample, mask = np.concatenate([sample, [self.eod_id]]), np.concatenate([mask, [1]]).astype(np.uint8)
            reason = None if options.mask_convention == "automodel" else \
                "loss mask is all zeros (nothing to train on)" if not mask.any() else \
                "loss mask is all ones (no prompt: check the template or --columns)" if mask.all() else None  # AutoModel keeps them
            if reason:
                rejects.add(path, lambda j=where[k]: locate(j), reason)
                continue
            if options.max_length and len(sample) > options.max_length:
                if options.overlong == "drop" or not mask[:options.max_length].any():
                    counts["dropped_overlong"] += 1
                    continue
                sample, mask = sample[:options.max_length], mask[:options.max_length]
                counts["truncated"] += 1
            tokens.append(sample)
            masks.append(mask)
            lengths.append(len(sample))
        if tokens:
            lengths = np.array(lengths, np.int32)
            ones = np.ones(len(lengths), np.int32)
            writers["tokens"].write(np.concatenate(tokens), lengths, ones)
            writers["loss_mask"].write(np.concatenate(masks), lengths, ones)
        return len(tokens)
