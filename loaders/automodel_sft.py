"""AutoModel's SFT items from prep's offline SFT outputs (chat, instruction, completion).

NeMo AutoModel's ChatDataset, ColumnMappedTextInstructionDataset and SQuAD/HellaSwag datasets
render, tokenize and mask each row at train time and package it the same way
(formatting_utils._package_tokenized_example): `input_ids` is the ids without the last,
`labels` the ids without the first with -100 where the loss mask is 0, `attention_mask` ones
over the content, and `___PAD_TOKEN_IDS___` the pad values AutoModel's collate functions read.
Here the ids and masks come from prep's `tokens` and `loss_mask` datasets; the packaging,
truncation and padding follow AutoModel's, so its collate functions and packers take the items
unchanged. numpy + torch only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from loaders import manifest as manifest_mod
from loaders.formats.indexed import IndexedDataset

IGNORE = -100
# AutoModel's options that decide ids or masks, decided when prep tokenized: each must agree with
# the output (name -> (manifest config field, the prep option that sets it)).
DECIDED = {"mask_history": ("last_turn_only", "--last-turn-only"),
           "mask_reasoning_content": ("mask_reasoning", "--mask-reasoning")}
TOKENIZE_TIME = ("chat_template", "start_of_turn_token", "mask_generation_prompt", "shuffle_seed", "name",
                 "column_mapping", "answer_only_loss_mask", "use_hf_chat_template", "limit_dataset_samples")


def pad_and_eos(tokenizer, special_ids: dict) -> tuple[int | None, int | None]:
    """(pad, eos) as AutoModel's datasets take them: the tokenizer's pad id, or its EOS when it has
    none (or when the pad id is 0: `_add_pad_token(tok) or eos`); without a tokenizer, the ids the
    manifest recorded."""
    if tokenizer is None:
        eos = special_ids.get("eos")
        return (special_ids.get("pad") or eos), eos
    eos = getattr(tokenizer, "eos_token_id", 0)
    return (getattr(tokenizer, "pad_token_id", None) or eos), eos


def package(ids: np.ndarray, mask: np.ndarray, pad: int | None, eos: int | None, seq_length: int | None,
            padding, truncation, unshifted: bool) -> dict:
    """One sample as AutoModel packages it, after its tokenizer's truncation and padding."""
    ids, mask = ids.tolist(), mask.tolist()
    if seq_length and truncation not in (False, None, "do_not_truncate") and len(ids) > seq_length:
        ids, mask = ids[:seq_length], mask[:seq_length]
    if seq_length and padding == "max_length" and len(ids) < seq_length:
        ids, mask = ids + [pad] * (seq_length - len(ids)), mask + [0] * (seq_length - len(ids))
    content = len(ids)
    if pad is not None and content:
        end = content
        while end > 0 and ids[end - 1] == pad:
            end -= 1
        content = min(end + 1, content) if pad == eos else end
    if unshifted:
        attention = [1] * content + [0] * (len(ids) - content)
        return {"input_ids": ids, "loss_mask": [int(bool(m)) for m in mask], "attention_mask": attention,
                "___PAD_TOKEN_IDS___": {"input_ids": pad, "loss_mask": 0, "attention_mask": 0}}
    labels = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
    inputs = ids[:-1]
    content = max(0, min(content - 1, len(inputs)))
    attention = [1] * content + [0] * (len(inputs) - content)
    if seq_length and padding == "max_length":
        inputs = inputs + [pad] * (seq_length - len(inputs))
        labels = labels + [IGNORE] * (seq_length - len(labels))
    attention += [0] * (len(labels) - len(attention))
    return {"input_ids": inputs, "labels": labels, "attention_mask": attention,
            "___PAD_TOKEN_IDS___": {"input_ids": pad, "labels": IGNORE, "attention_mask": 0}}


def _rows(split: str | None, n: int) -> range:
    """AutoModel's split slice (`train`, `train[1024:]`, `train[:10%]`) over the output's samples."""
    if not split or "[" not in split:
        return range(n)
    match = re.fullmatch(r"\w+\[(-?\d*%?):(-?\d*%?)\]", split.strip())
    if not match:
        raise ValueError(f"split={split!r}: expected NAME or NAME[start:stop]")

    def bound(text):
        if not text:
            return None
        return int(n * int(text[:-1]) / 100) if text.endswith("%") else int(text)

    return range(n)[slice(bound(match.group(1)), bound(match.group(2)))]


class SFTItems(torch.utils.data.Dataset):
    """A prep SFT output's samples (each sequence of a packed output too) as AutoModel's items."""

    def __init__(self, path, tokenizer=None, seq_length: int | None = None, padding="do_not_pad",
                 truncation="do_not_truncate", unshifted: bool = False, split: str | None = None, what: str = "SFT",
                 **decided):
        m = manifest_mod.load(path)
        if m["format"] != "megatron" or set(m["datasets"]) != {"tokens", "loss_mask"}:
            raise ValueError(f"{path}: not a prep {what} output (tokens + loss_mask; made with prep tokenize --recipe chat, "
                             f"instruction or completion, --format megatron)")
        config = m["config"]
        for name, value in decided.items():
            if value is not None and name in DECIDED and bool(value) != bool(config.get(DECIDED[name][0])):
                field, option = DECIDED[name]
                raise ValueError(f"{name}={value}: {path} was tokenized {'without' if value else 'with'} {option}; "
                                 f"it decides this offline (rerun prep tokenize {'with' if value else 'without'} it)")
        root = Path(m["_dir"])
        self.tokens = [IndexedDataset(root / s["prefix"]) for s in m["datasets"]["tokens"]["shards"]]
        self.masks = [IndexedDataset(root / s["prefix"]) for s in m["datasets"]["loss_mask"]["shards"]]
        counts = np.array([len(t) for t in self.tokens], np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        self.rows = _rows(split, int(self.shard_starts[-1]))
        self.pad, self.eos = pad_and_eos(tokenizer, m["tokenizer"].get("special_ids", {}))
        self.options = dict(seq_length=seq_length, padding=padding, truncation=truncation, unshifted=unshifted)
        self.manifest = m

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        shard = int(np.searchsorted(self.shard_starts, row, "right")) - 1
        j = row - int(self.shard_starts[shard])
        return package(np.asarray(self.tokens[shard][j]), np.asarray(self.masks[shard][j]), self.pad, self.eos,
                       **self.options)


def _sft(target: str, what: str, path, tokenizer, seq_length, padding, truncation, unshifted, split, unused: dict,
         **decided) -> SFTItems:
    refused = sorted(k for k in unused if k in TOKENIZE_TIME and unused[k] not in (None, False)
                     and not (k == "answer_only_loss_mask" and unused[k] is True))  # prep's masks are answer-only
    if refused:
        raise TypeError(f"{target}: {', '.join(refused)} decide(s) tokens or masks, which prep decided when it tokenized; "
                        "set them on prep tokenize (--chat-template, --columns, ...) instead")
    unknown = sorted(k for k in unused if k not in TOKENIZE_TIME and k != "skip_invalid_samples")
    if unknown:
        raise TypeError(f"{target}: unknown or unsupported argument(s) {unknown}")
    if path is None:
        raise TypeError(f"{target}: name the prep output with path_or_dataset_id (or path)")
    return SFTItems(path, tokenizer, seq_length, padding, truncation, unshifted, split, what, **decided)


def ChatDataset(path_or_dataset_id=None, tokenizer=None, *, path=None, split: str | None = None, seq_length: int | None = None,
                padding="do_not_pad", truncation="do_not_truncate", mask_history: bool | None = None,
                mask_reasoning_content: bool | None = None, unshifted: bool = False, **unused) -> SFTItems:
    """AutoModel's `llm.chat_dataset.ChatDataset` over prep's offline chat output (`path`: the
    output folder or its manifest). Items as AutoModel's: `input_ids`, `labels`, `attention_mask`
    (or `loss_mask` with `unshifted`). `mask_history` / `mask_reasoning_content` must agree with
    how prep tokenized (`--last-turn-only`, `--mask-reasoning`); the template's options are prep's."""
    return _sft("loaders.automodel.ChatDataset", "chat", path_or_dataset_id or path, tokenizer, seq_length, padding, truncation,
                unshifted, split, unused, mask_history=mask_history, mask_reasoning_content=mask_reasoning_content)


def ColumnMappedTextInstructionDataset(path_or_dataset_id=None, tokenizer=None, *, path=None, split: str | None = None,
                                       seq_length: int | None = None, padding="do_not_pad", truncation="do_not_truncate",
                                       unshifted: bool = False, **unused) -> SFTItems:
    """AutoModel's `llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset`
    over prep's offline instruction output (its columns and prompt were prep's `--columns`)."""
    return _sft("loaders.automodel.ColumnMappedTextInstructionDataset", "instruction", path_or_dataset_id or path, tokenizer,
                seq_length, padding, truncation, unshifted, split, unused)
