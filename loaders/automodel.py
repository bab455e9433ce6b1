"""prep's outputs as drop-in datasets for NeMo AutoModel configs (`_target_: loaders.automodel.X`).

Each name here takes the YAML arguments of AutoModel's class of that name and returns the dataset
itself, whose items are AutoModel's (same keys, dtypes, shapes and pad conventions), so that
AutoModel's collate functions and samplers take them unchanged. Nothing is tokenized or indexed at
train time beyond what `prep index` would cache. numpy + torch only: AutoModel is not imported.

- `MegatronPretraining`: AutoModel's `llm.megatron_dataset.MegatronPretraining`, sample for sample
  (its vendored Megatron GPT dataset: Megatron-Core's document, sample and shuffle indices; items
  `input_ids`, `labels`, `loss_mask` and `attention_mask` with `create_attention_mask`).
- `NanogptDataset`: AutoModel's `llm.nanogpt_dataset.NanogptDataset` windows over prep's NanoGPT
  shards (or any shards), in its order, map-style with a known length; SFT shards give -100 labels.
- `ChatDataset`, `ColumnMappedTextInstructionDataset`, `make_squad_dataset`, `HellaSwag`: AutoModel's
  SFT items from prep's offline chat / instruction / completion outputs (`loaders.automodel_sft`).
- `RetrievalDatasetConfig` (also as `make_retrieval_dataset`) and `BiEncoderCollator`: the
  bi-encoder recipe's dataset and collate targets over prep's retrieval outputs
  (`loaders.automodel_retrieval`).
"""

from __future__ import annotations

import functools
import glob
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from loaders.automodel_retrieval import BiEncoderCollator, RetrievalDatasetConfig  # noqa: F401 (targets)
from loaders.automodel_sft import (  # noqa: F401 (targets)
    ChatDataset, ColumnMappedTextInstructionDataset, HellaSwag, SFTItems, make_squad_dataset)
from loaders.gpt import GPTDataset, masks_and_position_ids
from loaders.nanogpt import NanoGPTDataset

SPLIT_NAMES = {"train": 0, "validation": 1, "valid": 1, "val": 1, "dev": 1, "test": 2}
AUTOMODEL_PAD = -100  # AutoModel's pad id when the tokenizer gives none


def _blend(paths) -> tuple[list[str], list[float] | None]:
    """AutoModel's (and Megatron's) path lists: [p, ...] or the zipped ["30", p1, "70", p2]; a glob
    of .bin/.idx files is its sorted prefixes, as AutoModel's get_list_of_files expands it."""
    if isinstance(paths, (str, Path)):
        if glob.has_magic(str(paths)):
            found = glob.glob(str(paths))
            if not found:
                raise ValueError(f"no files match {paths}")
            return sorted({str(Path(p).with_suffix("")) for p in found if p.endswith((".bin", ".idx"))}), None
        return [str(paths)], None
    paths = [str(p) for p in paths]
    try:
        weights = [float(w) for w in paths[0::2]]
    except ValueError:
        return paths, None
    return paths[1::2], (weights if len(paths) > 2 else None)


def _trailing_pad(sequence: np.ndarray, pad: int | None, eos: int | None) -> np.ndarray | None:
    """AutoModel's right-trailing pad mask (formatting_utils._get_right_trailing_pad_mask): the
    pad id's positions; when pad == eos, the trailing run of that id after its first (the real EOS).
    None when nothing is masked."""
    if pad is None:
        return None
    if pad != eos:
        mask = sequence == pad
        return mask if mask.any() else None
    if len(sequence) == 0 or sequence[-1] != pad:  # the common case: no trailing run at all
        return None
    content = np.flatnonzero(sequence != pad)
    mask = np.zeros(len(sequence), bool)
    mask[(int(content[-1]) + 2) if len(content) else 1:] = True
    return mask if mask.any() else None


class PretrainingSplit(torch.utils.data.Dataset):
    """One split of a GPT blend with AutoModel's items and `len()`: capped at the samples asked for,
    except that a blend is as long as Megatron's builder makes it (each dataset's share rounded up)."""

    def __init__(self, dataset: GPTDataset, num_samples: int | None, pad_id: int | None, eos_id: int | None,
                 create_attention_mask: bool):
        self.dataset, self.pad_id, self.eos_id, self.create_attention_mask = dataset, pad_id, eos_id, create_attention_mask
        self.length = len(dataset) if num_samples is None or dataset.blended else min(num_samples, len(dataset))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.dataset[i]
        tokens, labels = item["tokens"].numpy().astype(np.int64), item["labels"].numpy().astype(np.int64)  # copies
        loss_mask = np.ones(len(labels), np.float32)
        tokens_pad, labels_pad = _trailing_pad(tokens, self.pad_id, self.eos_id), _trailing_pad(labels, self.pad_id, self.eos_id)
        if labels_pad is not None:
            loss_mask[labels_pad] = 0.0
            labels[labels_pad] = 0
        if tokens_pad is not None:
            tokens[tokens_pad] = 0
            # AutoModel's tokens and labels are views of one sample (text[:-1], text[1:]): zeroing a
            # token zeroes the label before it too (its loss mask left as it is)
            shifted = np.flatnonzero(tokens_pad)
            labels[shifted[shifted >= 1] - 1] = 0
        # a blend's items say their dataset first, as a numpy int16 like AutoModel's BlendedDataset
        out = {"dataset_id": np.int16(int(item["dataset_id"]))} if "dataset_id" in item else {}
        out["input_ids"], out["labels"] = torch.from_numpy(tokens), torch.from_numpy(labels)
        if self.create_attention_mask:
            out["attention_mask"] = masks_and_position_ids(out["input_ids"], -10000)[0]
        out["loss_mask"] = torch.from_numpy(loss_mask)
        return out


def sample_counts(num_train, num_val, num_test, max_steps, global_batch_size, val_check_interval, limit_val_batches,
                  per_split: bool) -> list:
    """[train, validation, test] sample counts as AutoModel's MegatronPretraining.build derives them
    (None: one epoch). Without max_steps and num_train_samples, train is one epoch and validation
    too; with them, validation is (train steps // val_check_interval) * limit_val_batches * global
    batch size unless num_val_samples says (0 when training is shorter than one check interval)."""
    steps = max_steps
    train = None if steps is None or steps == -1 else int(steps * global_batch_size)
    if num_train is not None:
        if train is not None and num_train < train:
            raise ValueError(f"num_train_samples must be greater than or equal to {train}.")
        train, steps = num_train, int(num_train / global_batch_size)
    if num_val is not None:
        val = num_val
    elif steps is None or steps == -1:
        val = None
    else:
        val = int(steps // val_check_interval) * limit_val_batches * global_batch_size
    if isinstance(limit_val_batches, float) and 0.0 < limit_val_batches <= 1.0:
        if not per_split:
            raise ValueError("When using a single data distribution, limit_val_batches <= 1.0 is not supported; "
                             "pass a dict of paths with train, validation and test entries")
        val = None  # one epoch on every validation
    return [train, val, num_test]


def megatron_split(paths, seq_length: int = 2048, tokenizer=None, micro_batch_size: int = 4, global_batch_size: int = 8,
                   create_attention_mask: bool = False, seed: int = 1234, split: str = "900,50,50",
                   index_mapping_dir: str | None = None, num_dataset_builder_threads: int = 1,
                   num_train_samples: int | None = None, num_val_samples: int | None = None,
                   num_test_samples: int | None = None, trainer_max_steps: int | None = None,
                   trainer_val_check_interval: int = 1000, trainer_limit_val_batches: int | float = 1,
                   trainer_limit_test_batches: int | float = 1, mmap_bin_files: bool = True,
                   splits_to_build: str = "train") -> PretrainingSplit:
    """The `splits_to_build` split of AutoModel's MegatronPretraining (see `MegatronPretraining`,
    which checks the arguments)."""
    if isinstance(paths, (str, Path)) and str(paths).endswith(".json") and Path(paths).is_file():
        paths = json.loads(Path(paths).read_text())
    split_index = SPLIT_NAMES[splits_to_build]
    if isinstance(split, (list, tuple)):
        split = ", ".join(str(x) for x in split)
    num_samples = sample_counts(num_train_samples, num_val_samples, num_test_samples, trainer_max_steps, global_batch_size,
                                trainer_val_check_interval, trainer_limit_val_batches, isinstance(paths, dict))
    pad_id = getattr(tokenizer, "pad_token_id", AUTOMODEL_PAD) if tokenizer is not None else AUTOMODEL_PAD
    eos_id = getattr(tokenizer, "eos_token_id", None)
    options = dict(seq_length=seq_length, num_samples=num_samples, seed=seed, cache_dir=index_mapping_dir,
                   create_attention_mask=create_attention_mask)

    def build(eod_id):
        if isinstance(paths, dict):  # each split reads its own blend whole: only the one asked for is built
            wanted = [value for name, value in paths.items() if SPLIT_NAMES[name] == split_index]
            if not wanted:
                raise ValueError(f"paths has no {splits_to_build} entry")
            blends = [_blend(wanted[-1]) if i == split_index else None for i in range(3)]
            return GPTDataset.per_split(blends, eod_id=eod_id, **options)[split_index]
        prefixes, weights = _blend(paths)
        return GPTDataset(prefixes, weights if len(prefixes) > 1 else None, split=split, split_index=split_index,
                          eod_id=eod_id, **options)

    try:
        dataset = build(None)  # the EOD id the manifests name
    except ValueError as exc:
        if "names the EOD token" not in str(exc) or eos_id is None:
            raise
        dataset = build(eos_id)  # Megatron prefixes without a manifest: the tokenizer's EOS
    return PretrainingSplit(dataset, num_samples[split_index], pad_id, eos_id, create_attention_mask)


@dataclass(eq=False)
class MegatronPretraining(torch.utils.data.Dataset):
    """AutoModel's `llm.megatron_dataset.MegatronPretraining` (and its typed config) over prep outputs
    (folders or manifests), Megatron prefixes, zipped weight lists, a dict of per-split lists, or a
    JSON file of either: the `splits_to_build` split, sample for sample.

    As a YAML target it is what AutoModel resolves its own name to, a typed config that takes the
    recipe's training schedule: the sample counts come from `step_scheduler` (max_steps x global
    batch size, validation from val_every_steps) as AutoModel derives them, and the dataloader's
    `dataloader_type: single | cyclic` (its Megatron sampler) works unchanged. Called directly it is
    the dataset itself (indexable, AutoModel's `len()`), its counts from the arguments: None is one
    epoch. `tokenizer` gives the pad and EOS ids; the EOD id comes from the manifests, else the
    tokenizer's EOS. The builder's threads and mmap options change nothing here."""

    accepts_tokenizer: ClassVar[bool] = True
    requires_training_schedule: ClassVar[bool] = True

    paths: Any
    seq_length: int = 2048
    tokenizer: Any = None
    micro_batch_size: int | None = None
    global_batch_size: int | None = None
    create_attention_mask: bool = False
    seed: int = 1234
    split: Any = "900,50,50"
    index_mapping_dir: str | None = None
    num_dataset_builder_threads: int = 1
    num_train_samples: int | None = None
    num_val_samples: int | None = None
    num_test_samples: int | None = None
    trainer_max_steps: int | None = None
    trainer_val_check_interval: int | None = None
    trainer_limit_val_batches: int | float = 1
    trainer_limit_test_batches: int | float = 1
    mmap_bin_files: bool = True
    splits_to_build: str = "train"
    object_storage_config: Any = None

    def __post_init__(self):
        if self.object_storage_config is not None:
            raise TypeError("MegatronPretraining: unsupported argument object_storage_config (prep's outputs are read "
                            "from a file system; copy or mount them)")
        if not isinstance(self.splits_to_build, str) or self.splits_to_build not in ("train", "validation", "test"):
            raise ValueError(f"splits_to_build={self.splits_to_build!r}: name one split, train, validation or test")

    def build(self, *, tokenizer=None, training_schedule=None) -> PretrainingSplit:
        """The split, with the recipe's schedule (batch sizes, max_steps, val_every_steps) where the
        arguments leave them unset."""
        s = training_schedule
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "object_storage_config"}
        options["tokenizer"] = tokenizer if tokenizer is not None else self.tokenizer
        for name, scheduled, default in (("micro_batch_size", s and s.local_batch_size, 4),
                                         ("global_batch_size", s and s.global_batch_size, 8),
                                         ("trainer_max_steps", s and s.max_steps, None),
                                         ("trainer_val_check_interval", s and s.val_check_interval, 1000)):
            if options[name] is None:
                options[name] = scheduled if scheduled is not None else default
        return megatron_split(**options)

    @functools.cached_property
    def _split(self) -> PretrainingSplit:
        return self.build()

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, i: int) -> dict:
        return self._split[i]


class NanogptWindows(torch.utils.data.Dataset):
    """AutoModel's NanoGPT items (`input_ids`, `labels` as lists) over every window, in its order."""

    def __init__(self, windows: NanoGPTDataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        item = self.windows[i]
        return {"input_ids": item["input_ids"].tolist(), "labels": item["labels"].tolist()}


def NanogptDataset(file_pattern, seq_len: int, *, bos_token: int | None = None, shuffle_files: bool = False,
                   align_to_bos: bool = False, **unused) -> NanogptWindows:
    """AutoModel's `llm.nanogpt_dataset.NanogptDataset` arguments: `file_pattern` a prep NanoGPT
    output (folder or manifest), a glob or a list of shards. Its windows, in the order one AutoModel
    reader yields them over the sorted shards (one pass), map-style: AutoModel's sampler shuffles and
    splits them across ranks (so `shuffle_files` changes nothing here). `bos_token` defaults to the
    manifest's BOS."""
    if unused:
        raise TypeError(f"NanogptDataset: unknown or unsupported argument(s) {sorted(unused)}")
    source = file_pattern
    if isinstance(file_pattern, (str, Path)) and (Path(file_pattern).is_dir() or str(file_pattern).endswith(".json")):
        source = Path(file_pattern)
    elif isinstance(file_pattern, (str, Path)):
        source = sorted(glob.glob(str(file_pattern)))
        if not source:
            raise FileNotFoundError(f"No files matched pattern {file_pattern}")
    else:
        source = [str(f) for f in file_pattern]
    return NanogptWindows(NanoGPTDataset(source, seq_len, align_to_bos=align_to_bos, bos_token=bos_token))


# AutoModel resolves its own make_retrieval_dataset target to the typed config (the recipe reads
# `n_passages` off it); the same name here is that config.
make_retrieval_dataset = RetrievalDatasetConfig
