"""AutoModel's SFT items from prep's offline SFT outputs (chat, instruction, completion).

NeMo AutoModel's ChatDataset, ColumnMappedTextInstructionDataset and SQuAD dataset render,
tokenize and mask each row at train time and package it the same way
(formatting_utils._package_tokenized_example): `input_ids` is the ids without the last,
`labels` the ids without the first with -100 where the loss mask is 0, `attention_mask` ones
over the content, and `___PAD_TOKEN_IDS___` the pad values AutoModel's collate functions read.
Its HellaSwag (SFTSingleTurnPreprocessor) packages apart: `input_ids` all the ids, `labels`
shifted with a last -100, `loss_mask`, and every item padded to the split's longest (a multiple of 8).
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
           "mask_reasoning_content": ("mask_reasoning", "--mask-reasoning"),
           "use_hf_chat_template": ("use_chat_template", "--use-chat-template")}
TOKENIZE_TIME = ("chat_template", "start_of_turn_token", "mask_generation_prompt", "shuffle_seed", "name",
                 "column_mapping", "answer_only_loss_mask", "limit_dataset_samples")


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
            padding, truncation, unshifted: bool, max_length: int | None = None) -> dict:
    """One sample as AutoModel packages it, after its tokenizer's truncation and padding (to
    `seq_length`, else to the tokenizer's `max_length`, as HF tokenizers do without a length)."""
    ids, mask = ids.tolist(), mask.tolist()
    limit = seq_length or max_length
    if limit and truncation not in (False, None, "do_not_truncate") and len(ids) > limit:
        ids, mask = ids[:limit], mask[:limit]
    if limit and padding == "max_length" and len(ids) < limit:
        ids, mask = ids + [pad] * (limit - len(ids)), mask + [0] * (limit - len(ids))
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


def package_single_turn(ids: np.ndarray, mask: np.ndarray, pad: int, max_len: int | None) -> dict:
    """One sample as AutoModel's SFTSingleTurnPreprocessor packages it: labels -100 over the context
    but its last token, then the target, then -100; padded (or cut) to `max_len` when given."""
    ids = ids.tolist()
    context = int(np.argmax(mask)) if mask.any() else len(ids)
    labels = [IGNORE] * (context - 1) + ids[context:] + [IGNORE]
    item = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
            "loss_mask": [int(label != IGNORE) for label in labels]}
    if max_len is None:
        return item
    return {"input_ids": ids[:max_len] + [pad] * max(0, max_len - len(ids)),
            "attention_mask": [1] * min(len(ids), max_len) + [0] * max(0, max_len - len(ids)),
            "labels": labels[:max_len] + [IGNORE] * max(0, max_len - len(labels)),
            "loss_mask": item["loss_mask"][:max_len] + [0] * max(0, max_len - len(labels))}


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
        manifest_mod.check_tokenizer(m, tokenizer)
        root = Path(m["_dir"])
        self.tokens = [IndexedDataset(root / s["prefix"]) for s in m["datasets"]["tokens"]["shards"]]
        self.masks = [IndexedDataset(root / s["prefix"]) for s in m["datasets"]["loss_mask"]["shards"]]
        counts = np.array([len(t) for t in self.tokens], np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        self.rows = _rows(split, int(self.shard_starts[-1]))
        self.pad, self.eos = pad_and_eos(tokenizer, m["tokenizer"].get("special_ids", {}))
        # the tokenizer's own limit where AutoModel asks it to pad or truncate without a length
        limit = getattr(tokenizer, "model_max_length", None)
        max_length = limit if seq_length is None and isinstance(limit, int) and limit < 10**12 else None
        self.options = dict(seq_length=seq_length, padding=padding, truncation=truncation, unshifted=unshifted,
                            max_length=max_length)
        self.manifest = m
        # AutoModel's ColumnMapped dataset gives the next item for one with nothing trained
        self.skip_untrained = what == "instruction"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if not self.skip_untrained:
            return self._item(i)
        for _ in range(len(self.rows)):
            item = self._item(i)
            if any(label != IGNORE for label in item["labels"]) if "labels" in item else any(item["loss_mask"]):
                return item
            i = (i + 1) % len(self.rows)
        raise ValueError(f"{self.manifest['_dir']}: every sample has nothing to train once packaged (as AutoModel, which "
                         "refuses such a dataset); check seq_length and truncation")

    def _item(self, i: int) -> dict:
        row = self.rows[i]
        shard = int(np.searchsorted(self.shard_starts, row, "right")) - 1
        j = row - int(self.shard_starts[shard])
        return self.package(np.asarray(self.tokens[shard][j]), np.asarray(self.masks[shard][j]))

    def package(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        return package(ids, mask, self.pad, self.eos, **self.options)

    def lengths(self) -> np.ndarray:
        """Each row's token count, from the index (no token is read)."""
        every = np.concatenate([t.sequence_lengths for t in self.tokens]) if self.tokens else np.zeros(0, np.int64)
        return every[np.asarray(self.rows, np.int64)]


class SingleTurnItems(SFTItems):
    """A prep completion output made with --mask-convention automodel, as AutoModel's
    SFTSingleTurnPreprocessor items (HellaSwag, get_context / get_target datasets)."""

    def __init__(self, path, tokenizer=None, split: str | None = None, pad_to_max_length: bool = True):
        super().__init__(path, tokenizer, split=split, what="completion")
        config = self.manifest["config"]
        if config.get("mask_convention") != "automodel" or "completion" not in (config["recipe"], config.get("recipe_base")):
            raise ValueError(f"{path}: not made the way AutoModel's HellaSwag tokenizes (context and target apart); rerun "
                             "prep tokenize --recipe completion (or a get_context / get_target class) --mask-convention automodel")
        # SFTSingleTurnPreprocessor pads with the tokenizer's pad id or 0, to the longest row rounded up to 8
        self.pad = (getattr(tokenizer, "pad_token_id", None) if tokenizer is not None
                    else self.manifest["tokenizer"].get("special_ids", {}).get("pad")) or 0
        lengths = self.lengths()
        self.max_len = (-(-int(lengths.max()) // 8) * 8 if len(lengths) else 0) if pad_to_max_length else None

    def package(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        return package_single_turn(ids, mask, self.pad, self.max_len)


def _sft(target: str, what: str, path, tokenizer, seq_length, padding, truncation, unshifted, split, unused: dict,
         prepacked: bool = False, packed_sequence_size: int | None = None, **decided):
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
    items = SFTItems(path, tokenizer, seq_length, padding, truncation, unshifted, split, what, **decided)
    if not prepacked:
        return items
    from loaders.automodel_packed import PrepackedItems

    return PrepackedItems(items, packed_sequence_size)


def ChatDataset(path_or_dataset_id=None, tokenizer=None, *, path=None, split: str | None = None, seq_length: int | None = None,
                padding="do_not_pad", truncation="do_not_truncate", mask_history: bool | None = None,
                mask_reasoning_content: bool | None = None, unshifted: bool = False, prepacked: bool = False,
                packed_sequence_size: int | None = None, **unused):
    """AutoModel's `llm.chat_dataset.ChatDataset` over prep's offline chat output (`path`: the
    output folder or its manifest). Items as AutoModel's: `input_ids`, `labels`, `attention_mask`
    (or `loss_mask` with `unshifted`). `mask_history` / `mask_reasoning_content` must agree with
    how prep tokenized (`--last-turn-only`, `--mask-reasoning`); the template's options are prep's.
    `prepacked: true` over an output made with `--pack N`: prep's packs as AutoModel's THD packed
    items (`loaders.automodel_packed`), for `packed_sequence: {prepacked: true}`."""
    return _sft("loaders.automodel.ChatDataset", "chat", path_or_dataset_id or path, tokenizer, seq_length, padding, truncation,
                unshifted, split, unused, prepacked, packed_sequence_size, mask_history=mask_history,
                mask_reasoning_content=mask_reasoning_content)


def ColumnMappedTextInstructionDataset(path_or_dataset_id=None, tokenizer=None, *, path=None, split: str | None = None,
                                       seq_length: int | None = None, padding="do_not_pad", truncation="do_not_truncate",
                                       unshifted: bool = False, use_hf_chat_template: bool | None = None,
                                       prepacked: bool = False, packed_sequence_size: int | None = None, **unused):
    """AutoModel's `llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset`
    over prep's offline instruction output (its columns and prompt were prep's `--columns`);
    `prepacked` as ChatDataset's."""
    return _sft("loaders.automodel.ColumnMappedTextInstructionDataset", "instruction", path_or_dataset_id or path, tokenizer,
                seq_length, padding, truncation, unshifted, split, unused, prepacked, packed_sequence_size,
                use_hf_chat_template=use_hf_chat_template)


def HellaSwag(path_or_dataset=None, tokenizer=None, split: str = "train", num_samples_limit: int | None = None,
              pad_to_max_length: bool = True, *, path=None) -> SingleTurnItems:
    """AutoModel's `llm.hellaswag.HellaSwag` over prep's offline completion output made with
    `--mask-convention automodel` (AutoModel's own class as the recipe:
    `--recipe nemo_automodel.components.datasets.llm.hellaswag:HellaSwag`, or `--recipe completion`
    with the gold ending as a column). `split` slices the output's samples; `num_samples_limit`
    keeps the first N, and padding goes to the longest of those, as AutoModel's does."""
    source = path_or_dataset or path
    if source is None:
        raise TypeError("loaders.automodel.HellaSwag: name the prep output with path_or_dataset (or path)")
    if isinstance(num_samples_limit, int):
        split = f"{split}[:{num_samples_limit}]"
    return SingleTurnItems(source, tokenizer, split, pad_to_max_length)


def make_squad_dataset(tokenizer=None, seq_length: int | None = None, limit_dataset_samples: int | None = None,
                       fp8: bool = False, split: str = "train", dataset_name=None, padding=False, truncation=False,
                       chat_template: str | None = None, *, path=None) -> SFTItems:
    """AutoModel's `llm.squad.make_squad_dataset` over prep's offline SQuAD output (`dataset_name`:
    the output folder), made with `prep tokenize --recipe instruction --preset squad
    --mask-convention automodel`, plus `--use-chat-template` exactly when the tokenizer has a chat
    template (AutoModel's SQuAD uses it whenever there is one)."""
    source = dataset_name or path
    if source is None:
        raise TypeError("loaders.automodel.make_squad_dataset: name the prep output with dataset_name (or path)")
    if chat_template is not None:
        raise TypeError("loaders.automodel.make_squad_dataset: chat_template decides tokens, which prep decided when it "
                        "tokenized; pass --chat-template to prep tokenize instead")
    items = SFTItems(source, tokenizer, seq_length, padding, truncation, split=_limited(split, limit_dataset_samples),
                     what="SQuAD")
    config = items.manifest["config"]
    if config.get("preset") != "squad" or config.get("mask_convention") != "automodel":
        raise ValueError(f"{source}: not a SQuAD output in AutoModel's convention (prep tokenize --recipe instruction "
                         "--preset squad --mask-convention automodel)")
    templated = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else bool(config.get("use_chat_template"))
    if templated != bool(config.get("use_chat_template")):
        raise ValueError(f"{source}: AutoModel's SQuAD {'renders' if templated else 'does not render'} with the tokenizer's chat "
                         f"template, but prep tokenized {'without' if templated else 'with'} --use-chat-template")
    return items


def _limited(split: str, limit: int | None) -> str:
    """AutoModel's limit_dataset_samples: `split[:N]` unless the split already slices."""
    if limit is None or "[" in split:
        return split
    return f"{split}[:{int(limit)}]"
