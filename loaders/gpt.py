"""GPT pretraining samples from Megatron indexed datasets, in Megatron-Core 0.16.1's order.

`GPTDataset` gives, sample for sample, what Megatron-Core's `GPTDataset` (one prefix, no
weights) or `BlendedDataset` (several prefixes, or weights) give for the same files, seed,
sequence length, split and sample count. Its indices come from the numpy functions below, each
named after the Megatron code it reproduces, and are cached as `.npy` files whose names hash
everything they depend on. `GPTDataset.dataloader` shards batches over ranks the way Megatron's
pretraining sampler does, and the dataset's `state_dict` resumes it mid-pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from loaders.device_loader import Loader, _depth  # noqa: F401  (re-exported)
from loaders.index_cache import cached, digest, in_threads, must_build
from loaders.megatron_index import (SPLITS, blend_sizes, blending_indices, document_index, exhaustive_blending_indices,  # noqa: F401
                                    gpt_indices, normalize, num_epochs, parse_split, sample_index, shuffle_index,
                                    split_documents, split_matrix)
from loaders.gpt_sources import Options, Shard, _Source, masks_and_position_ids, megatron_pad_id, resolve  # noqa: F401


class GPTDataset(torch.utils.data.Dataset):
    """GPT samples of one split, equal to Megatron-Core's for the same blend and options.

    `paths`: a manifest, prep output folder or Megatron prefix, or a list of them; `weights`: one
    per path, as in Megatron's blend (a manifest's weight is shared among its shards by tokens).
    One prefix without weights is Megatron's plain GPTDataset (with a weight, Megatron's blend of
    one; in a split of `per_split`, plain either way); several without weights are
    Megatron's weightless blend (in proportion to their samples, one epoch of each at most). `num_samples`: for this
    split, or one per split (train, valid, test); None is one epoch. Items are dicts of tensors:
    tokens, labels, attention_mask (if create_attention_mask), loss_mask, position_ids, and
    dataset_id when blended. `blend_per_split`: set by `per_split`. Other keyword options: see `Options`.
    """

    def __init__(self, paths, weights=None, *, seq_length: int, num_samples=None, split_index: int = 0,
                 key: str | None = None, cache_dir: str | Path | None = None, eod_id: int | None = None,
                 pad_id: int | None = None, blend_per_split: bool = False, **options):
        self._args = dict(paths=paths, weights=weights, seq_length=seq_length, num_samples=num_samples,
                          key=key, cache_dir=cache_dir, eod_id=eod_id, pad_id=pad_id,
                          blend_per_split=blend_per_split, **options)
        self.options = o = Options(seq_length=seq_length, **options)
        self.split_index = split_index
        if split_matrix(parse_split(o.split))[split_index] is None:
            raise ValueError(f"split {o.split!r} leaves the {SPLITS[split_index]} split empty")
        shards, weights, tokenizer = resolve(paths, weights, key)
        self.eod_id = eod_id if eod_id is not None else (tokenizer or {}).get("eod_id")
        if self.eod_id is None:
            raise ValueError(f"{paths}: no manifest names the EOD token; pass eod_id")
        if pad_id is not None:  # Megatron's rule for the tokenizer's pad holds for a given one too
            special = {**dict((tokenizer or {}).get("special_ids") or {}), "eod": self.eod_id}
            tokenizer = {"special_ids": {**special, "pad": pad_id}}
        self.pad_id = megatron_pad_id(tokenizer)
        size = num_samples[split_index] if isinstance(num_samples, (list, tuple)) else num_samples
        cache_dir = Path(cache_dir) if cache_dir else None

        def source(shard, n):
            return _Source(shard, split_index, n, o, self.pad_id, cache_dir)

        self._fixed = self._blend_stem = self.dataset_index = self.dataset_sample_index = None
        self.consumed_samples = self.epoch = 0  # the dataloader's position: see state_dict
        if weights is not None and size is None:
            raise ValueError("blend weights need num_samples (Megatron: 'Using client-specified weights requires client-specified size')")
        # Megatron's blend_per_split ignores the weight of a single prefix (its `blend` does not):
        # a plain dataset of num_samples, without the surplus or a BlendedDataset around it.
        if len(shards) == 1 and (weights is None or blend_per_split):
            self.sources = [source(shards[0], size).build()]
            self.key = self.sources[0].key
        else:
            self._blend(shards, weights, size, source, cache_dir)

    def _blend(self, shards, weights, size, source, cache_dir):
        """BlendedMegatronDatasetBuilder's sizes and BlendedDataset's indices for one split."""
        o = self.options
        if weights is not None:  # the mid-level datasets get a surplus
            weights = normalize(weights)
            self.sources = [source(s, n) for s, n in zip(shards, blend_sizes(weights, size, o.mid_level_dataset_surplus))]
            size, weights = sum(blend_sizes(weights, size)), normalize(weights)
            self._blend_key(weights, size, cache_dir)
            # The blend needs only weights and size: built beside the datasets' indices, when not cached.
            with ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(blending_indices, weights, size) if must_build(self._blend_stem, self.BLEND) else None
                in_threads(_Source.build, [(s,) for s in self.sources])
                self._open(lambda: self._build_blend(weights, size, ahead))
            return
        self.sources = in_threads(_Source.build, [(source(s, None),) for s in shards])
        lengths = [len(s) for s in self.sources]
        size, weights = (None, lengths) if size is None else (min(size, sum(lengths)), normalize(lengths))
        self._blend_key(weights, size, cache_dir)
        self._open(lambda: self._build_blend(weights, size))

    BLEND = ("dataset_index", "dataset_sample_index")

    def _blend_key(self, weights, size, cache_dir) -> None:
        self.key = digest({"indices": "blend/1", "sources": [s.key for s in self.sources],
                            "weights": weights, "size": size})
        self._blend_stem = Path(cache_dir or Path(self.sources[0].prefix).parent / "cache") / f"blend-{self.key}"

    def _build_blend(self, weights, size, ahead=None):
        """BlendedDataset._build_indices: the blend, and its check that no dataset is oversampled."""
        if ahead is not None:
            index, sample = ahead.result()
        else:
            index, sample = blending_indices(weights, size) if size is not None else exhaustive_blending_indices(weights)
        counts = np.bincount(index, minlength=len(self.sources))
        for d, (count, src) in enumerate(zip(counts, self.sources)):
            if count > len(src):
                raise IndexError(f"{src.prefix}: the {SPLITS[self.split_index]} blend asks {count} samples of a dataset "
                                 f"of {len(src)}; raise mid_level_dataset_surplus (now {self.options.mid_level_dataset_surplus})")
        return index, sample

    def _open(self, build=None):
        self.dataset_index, self.dataset_sample_index = cached(self._blend_stem, self.BLEND, build)
        self._dataset_ids = [torch.tensor(d, dtype=torch.int16) for d in range(len(self.sources))]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("dataset_index", "dataset_sample_index", "_fixed", "_shared_by_device")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fixed = self.dataset_index = self.dataset_sample_index = None
        if self._blend_stem:
            self._open()

    @classmethod
    def from_manifests(cls, paths, weights=None, **kwargs) -> GPTDataset:
        """The blend of these manifests (or output folders), weighted like Megatron's --data-path."""
        return cls(paths, weights, **kwargs)

    @classmethod
    def per_split(cls, blends, **kwargs) -> list[GPTDataset | None]:
        """Megatron's `blend_per_split`: train, valid and test each from a blend of their own,
        `blends[i]` = paths or (paths, weights), or None for no such split. Each split reads its
        datasets whole (the split string is not used); `num_samples` is one per split. A blend of
        one prefix is a plain dataset of its num_samples, weighted or not, as in Megatron."""
        if len(blends) != 3:
            raise ValueError(f"blend_per_split: {len(blends)} blends; expected train, valid, test (None for none)")
        if "split" in kwargs:
            raise ValueError("blend_per_split: each split reads its datasets whole; drop `split`")
        whole = ("1,0,0", "0,1,0", "0,0,1")
        return [None if blend is None else cls(*(blend if isinstance(blend, tuple) else (blend, None)), split=whole[i],
                                                split_index=i, blend_per_split=True, **kwargs) for i, blend in enumerate(blends)]

    def splits(self) -> list[GPTDataset | None]:
        """Train, valid and test datasets of the same blend and options (None for an empty split)."""
        matrix = split_matrix(parse_split(self.options.split))
        return [GPTDataset(split_index=i, **self._args) if matrix[i] else None for i in range(3)]

    @property
    def blended(self) -> bool:
        return self.dataset_index is not None

    def __len__(self) -> int:
        return len(self.dataset_index) if self.blended else len(self.sources[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Megatron's `GPTDataset.__getitem__` (and `BlendedDataset.__getitem__` when blended)."""
        if self.blended:
            d = int(self.dataset_index[i])
            sample = self._sample(*self.sources[d].padded_text(int(self.dataset_sample_index[i])))
            return {"dataset_id": self._dataset_ids[d], **sample}
        return self._sample(*self.sources[0].padded_text(i))

    def _sample(self, text: np.ndarray, padded: bool | None = None) -> dict[str, torch.Tensor]:
        o, pad = self.options, self.pad_id
        if padded is None:
            padded = bool((text == pad).any())
        padded = padded or not o.add_extra_token_to_sequence
        text = torch.from_numpy(text)
        if o.add_extra_token_to_sequence:
            tokens, labels = text[:-1], text[1:]  # views of one buffer, as in Megatron
        else:
            tokens, labels = text, torch.roll(text, -1)
            labels[-1] = pad
        if o.reset_position_ids or o.reset_attention_mask or o.eod_mask_loss:
            attention_mask, loss_mask, position_ids = masks_and_position_ids(
                tokens, self.eod_id, o.reset_position_ids, o.reset_attention_mask, o.eod_mask_loss,
                o.create_attention_mask)
        else:  # the same for every sample: made once, as Megatron caches them (and shares all but loss_mask)
            if self._fixed is None:
                self._fixed = masks_and_position_ids(tokens, self.eod_id, create_attention_mask=o.create_attention_mask)
            attention_mask, loss_mask, position_ids = self._fixed
            loss_mask = loss_mask.clone()
        if padded:  # pads get no loss and become token 0
            loss_mask[labels == pad] = 0.0
            tokens[tokens == pad] = 0
            labels[labels == pad] = 0
        sample = {"tokens": tokens, "labels": labels}
        if o.create_attention_mask:
            sample["attention_mask"] = attention_mask
        return {**sample, "loss_mask": loss_mask, "position_ids": position_ids}

    # Batches ----------------------------------------------------------------------------------

    @property
    def _per_sample(self) -> bool:
        """Options whose masks or positions differ from sample to sample."""
        o = self.options
        return o.reset_position_ids or o.reset_attention_mask or o.eod_mask_loss

    def batch_shapes(self, batch_size: int) -> dict:
        """{name: (shape, numpy dtype)} of the arrays `fill_batch` writes for one batch."""
        shapes = {"text": ((batch_size, self.sources[0].length), np.int64), "padded": ((batch_size,), bool)}
        if self.blended:
            shapes["dataset_id"] = ((batch_size,), np.int16)
        return shapes

    def fill_batch(self, indices, arrays: dict[str, np.ndarray]) -> None:
        """Write the token windows of samples `indices` into `arrays` (of `batch_shapes`), whether
        each holds pad_id, and their dataset ids when blended: a loader worker's part. `finish`
        makes the batch from them."""
        at = np.asarray(indices, np.int64)
        if self.blended:
            datasets, samples = self.dataset_index[at], self.dataset_sample_index[at]
            arrays["dataset_id"][:] = datasets
        else:
            datasets, samples = np.zeros(len(at), np.int64), at
        text, padded = arrays["text"], arrays["padded"]
        for r, (d, i) in enumerate(zip(datasets.tolist(), samples.tolist())):
            padded[r] = self.sources[d].fill(i, text[r])

    def finish(self, arrays: dict) -> dict[str, torch.Tensor]:
        """The batch of `fill_batch`'s arrays, equal to `default_collate([self[i] for i in
        indices])`; it copies, never returning views of `arrays`. Numpy arrays give a batch on
        the CPU (numpy's copies are single-threaded, cheaper here than torch's); tensors, one on
        their device. The masks and positions every sample shares are expanded views of one
        cached tensor per device (Megatron shares them too)."""
        o, pad = self.options, self.pad_id
        text, padded = arrays["text"], np.asarray(arrays["padded"])  # `padded` stays on the CPU
        on_cpu = isinstance(text, np.ndarray)
        ids = {"dataset_id": torch.from_numpy(arrays["dataset_id"].copy()) if on_cpu else arrays["dataset_id"].clone()} \
            if "dataset_id" in arrays else {}
        if self._per_sample:  # masks and positions differ from sample to sample
            rows = [self._sample(row) for row in (text.copy() if on_cpu else text.cpu().numpy())]
            if ids:
                rows = [{"dataset_id": d, **r} for d, r in zip(ids["dataset_id"].cpu(), rows)]
            batch = torch.utils.data.default_collate(rows)
            return batch if on_cpu else {k: v.to(text.device) for k, v in batch.items()}
        if not o.add_extra_token_to_sequence:  # Megatron rolls the labels and treats every such sample as padded
            tokens, labels = (text.copy(), np.roll(text, -1, 1)) if on_cpu else (text.clone(), torch.roll(text, -1, 1))
            labels[:, -1] = pad
            padded = np.ones(len(text), bool)
        elif on_cpu:
            tokens, labels = text[:, :-1].copy(), text[:, 1:].copy()
        else:
            tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
        loss_mask = np.ones(tokens.shape, np.float32) if on_cpu else torch.ones(tokens.shape, device=text.device)
        rows = np.flatnonzero(padded)
        if len(rows):  # pads get no loss and become token 0, in the samples that have them
            rows = rows if on_cpu else torch.from_numpy(rows).to(text.device)
            for array, where in ((loss_mask, labels), (tokens, tokens), (labels, labels)):
                part = array[rows]
                part[where[rows] == pad] = 0
                array[rows] = part
        if on_cpu:
            tokens, labels, loss_mask = torch.from_numpy(tokens), torch.from_numpy(labels), torch.from_numpy(loss_mask)
        attention_mask, _, position_ids = self._shared(tokens.device)
        batch = {**ids, "tokens": tokens, "labels": labels}
        if o.create_attention_mask:
            batch["attention_mask"] = attention_mask[None].expand(len(tokens), *attention_mask.shape)
        batch.update(loss_mask=loss_mask, position_ids=position_ids[None].expand(len(tokens), -1))
        return batch

    def _shared(self, device: torch.device):
        cache = self.__dict__.setdefault("_shared_by_device", {})
        if device not in cache:
            placeholder = torch.zeros(self.options.seq_length, dtype=torch.long)
            cache[device] = tuple(None if t is None else t.to(device) for t in masks_and_position_ids(
                placeholder, self.eod_id, create_attention_mask=self.options.create_attention_mask))
        return cache[device]

    # Loading and resuming ---------------------------------------------------------------------

    def dataloader(self, batch_size: int, rank: int | None = None, world_size: int | None = None,
                   device: str | torch.device = "cpu", num_workers: int = 2, prefetch_factor: int | None = None) -> Loader:
        """This rank's batches from the dataset's position; see `Loader`. `num_workers` processes
        (0: in this one) each run up to `prefetch_factor` batches ahead (default: up to 16, within
        64 MB of shared memory)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        return Loader(self, batch_size, rank, world_size, torch.device(device), num_workers, prefetch_factor)

    def state_dict(self) -> dict:
        """Where the dataloader is: samples consumed over all ranks in this pass, and passes done."""
        return {"dataset": self.key, "consumed_samples": int(self.consumed_samples), "epoch": int(self.epoch)}

    def load_state_dict(self, state: dict) -> None:
        if state["dataset"] != self.key:
            raise ValueError(f"state of dataset {state['dataset']}, this is {self.key}: other data or options")
        self.consumed_samples, self.epoch = state["consumed_samples"], state["epoch"]
