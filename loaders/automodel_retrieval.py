"""AutoModel's bi-encoder data from prep's retrieval output: `RetrievalDatasetConfig` for the
YAML `dataset:` block and `BiEncoderCollator` for `dataloader.collate_fn`.

AutoModel's retrieval recipe reads the group size off the typed dataset config
(`dataset_config.n_passages`), so the target is a dataclass with AutoModel's fields and a
`build(tokenizer=)`, as its own RetrievalDatasetConfig is; a plain factory would train with one
passage a query. The dataset yields prep's token ids (query, positive first then negatives, corpus
ids); the collator, built by AutoModel with `tokenizer=`, truncates to `q_max_len` / `p_max_len`
as HF tokenizers cut (special tokens kept), pads on the tokenizer's side and returns
BiEncoderCollator's tensors. Prefixes and dataset instructions were applied when prep tokenized:
the collator's must agree. numpy + torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from loaders import manifest as manifest_mod
from loaders.formats.retrieval import truncate
from loaders.retrieval import RetrievalDataset, check_length, collate


class BiEncoderItems(torch.utils.data.Dataset):
    """Queries of one or more prep retrieval outputs (in order) with 1 positive + n negatives each."""

    def __init__(self, outputs: list, negatives: int, rows: np.ndarray | None, cycle_positive_docs: bool,
                 negative_sampling: str, seed: int):
        # the texts as stored: the collator truncates them
        self.parts = [RetrievalDataset(source, negatives, None, None, negative_sampling, seed, cycle_positive_docs)
                      for source in outputs]
        self.meta = [self._meta(part) for part in self.parts]
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.rows = np.arange(self.starts[-1]) if rows is None else rows

    @staticmethod
    def _meta(part: RetrievalDataset) -> dict:
        config = part.manifest["config"]
        return {"query_prefix": config.get("query_prefix") or "", "passage_prefix": config.get("passage_prefix") or "",
                "use_dataset_instruction": bool(config.get("use_dataset_instruction")), "suffix": part.suffix,
                "special": len(part.manifest["retrieval"]["special_tokens"]["before"]) + part.suffix,
                "stored": {"q_max_len": part.manifest["retrieval"]["query_max_length"],
                           "p_max_len": part.manifest["retrieval"]["doc_max_length"]},
                "pad_token_id": part.pad_token_id, "source": part.manifest["_dir"]}

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        k = int(np.searchsorted(self.starts, row, "right")) - 1
        return {**self.parts[k][row - int(self.starts[k])], "prep": self.meta[k]}


def _outputs(data_dir_list) -> list:
    entries = data_dir_list if isinstance(data_dir_list, (list, tuple)) else [data_dir_list]
    outputs = []
    for entry in entries:
        if isinstance(entry, dict):
            if entry.get("num_samples") is not None:
                raise ValueError(f"data_dir_list entry {entry}: num_samples draws rows with AutoModel's random sampler at "
                                 "load time; choose the rows when preparing the data (or use max_train_samples)")
            entry = entry.get("path")
        if not isinstance(entry, (str, Path)) or str(entry).startswith("hf://"):
            raise ValueError(f"data_dir_list entry {entry!r}: expected a prep retrieval output folder or manifest")
        outputs.append(entry)
    if not outputs:
        raise ValueError("data_dir_list must name at least one prep retrieval output")
    return outputs


@dataclass
class RetrievalDatasetConfig:
    """AutoModel's `llm.retrieval_dataset.RetrievalDatasetConfig` (also what its
    `make_retrieval_dataset` target resolves to) over prep retrieval outputs (`data_dir_list`:
    folders or manifests). `n_passages` is 1 positive + n-1 negatives, picked as AutoModel picks
    them (or drawn per epoch from `seed` with `negative_sampling: random`, prep's own)."""

    accepts_tokenizer: ClassVar[bool] = True

    data_dir_list: Any = None
    model_type: str = "bi_encoder"
    data_type: str = "train"
    n_passages: int = 5
    eval_negative_size: int | None = None
    seed: int = 42
    do_shuffle: bool = False
    max_train_samples: int | None = None
    train_data_select_offset: int = 0
    use_dataset_instruction: bool = False
    cycle_positive_docs: bool = False
    use_text_in_document: bool = False
    negative_sampling: str = "first"

    def build(self, *, tokenizer=None) -> BiEncoderItems:
        if self.model_type != "bi_encoder":
            raise ValueError(f"model_type={self.model_type!r}: prep's retrieval outputs serve the bi-encoder recipe")
        if self.use_text_in_document:
            raise ValueError("use_text_in_document is for image documents, which prep's retrieval recipe does not store")
        if self.data_type not in ("train", "eval"):
            raise ValueError(f"Invalid data type: {self.data_type}")
        negatives = self.n_passages - 1
        if self.data_type == "eval" and self.eval_negative_size is not None:
            negatives = self.eval_negative_size
        items = BiEncoderItems(_outputs(self.data_dir_list), negatives, None,
                               self.cycle_positive_docs and self.data_type == "train", self.negative_sampling, self.seed)
        for part in items.parts:
            manifest_mod.check_tokenizer(part.manifest, tokenizer)
        for meta in items.meta:
            if meta["use_dataset_instruction"] != bool(self.use_dataset_instruction):
                raise ValueError(f"use_dataset_instruction={self.use_dataset_instruction}: {meta['source']} was tokenized "
                                 f"{'with' if meta['use_dataset_instruction'] else 'without'} --use-dataset-instruction")
        if self.data_type == "train" and self.max_train_samples is not None:
            n = len(items)
            order = np.random.default_rng(self.seed).permutation(n) if self.do_shuffle else np.arange(n)  # HF's shuffle(seed)
            stop = min(self.train_data_select_offset + self.max_train_samples, n)
            items.rows = order[self.train_data_select_offset:stop]
        return items


class BiEncoderCollator:
    """AutoModel's `llm.retrieval_collator.BiEncoderCollator` arguments over BiEncoderItems:
    `q_input_ids` / `q_attention_mask` [B, Lq], `d_input_ids` / `d_attention_mask` [B*n, Ld]
    (each query's positive first), `labels` zeros [B], `passage_doc_ids` when every document has a
    corpus id. Pads with the tokenizer's pad id on its padding side."""

    def __init__(self, tokenizer=None, q_max_len: int = 512, p_max_len: int = 512, query_prefix: str = "",
                 passage_prefix: str = "", padding=True, pad_to_multiple_of: int | None = None,
                 use_dataset_instruction: bool = False, pad_token_id: int | None = None):
        if padding not in (True, "longest"):
            raise ValueError(f"padding={padding!r}: AutoModel's collator pads to the batch's longest; use true")
        self.tokenizer, self.q_max_len, self.p_max_len = tokenizer, q_max_len, p_max_len
        self.query_prefix, self.passage_prefix, self.use_dataset_instruction = query_prefix, passage_prefix, use_dataset_instruction
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        self.padding_side = getattr(tokenizer, "padding_side", "right") or "right"
        self.checked = set()

    def _check(self, meta: dict) -> None:
        if meta["source"] in self.checked:
            return
        asked = {"query_prefix": self.query_prefix or "", "passage_prefix": self.passage_prefix or "",
                 "use_dataset_instruction": bool(self.use_dataset_instruction)}
        for name, value in asked.items():
            if meta[name] != value:
                raise ValueError(f"BiEncoderCollator {name}={value!r}: {meta['source']} was tokenized with {meta[name]!r} "
                                 "(prep applies prefixes and instructions when it tokenizes: --query-prefix, --passage-prefix, "
                                 "--use-dataset-instruction)")
        for name, value in (("q_max_len", self.q_max_len), ("p_max_len", self.p_max_len)):
            check_length(name, value, meta["special"], meta["stored"][name], meta["source"])
        self.checked.add(meta["source"])

    def __call__(self, batch: list[dict]) -> dict:
        pad = self.pad_token_id if self.pad_token_id is not None else batch[0]["prep"]["pad_token_id"]
        items = []
        for item in batch:
            meta = item["prep"]
            self._check(meta)
            items.append({"query": truncate(item["query"], self.q_max_len, meta["suffix"]),
                          "docs": [truncate(d, self.p_max_len, meta["suffix"]) for d in item["docs"]],
                          "doc_ids": item["doc_ids"]})
        if pad is None:
            raise ValueError("BiEncoderCollator: the tokenizer has no pad token (AutoModel's recipe sets it to EOS); "
                             "pass pad_token_id")
        return collate(items, pad, self.pad_to_multiple_of, self.padding_side)
