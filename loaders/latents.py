"""Latent caches (`prep latents`): a dataset over the manifest, a bucket batch sampler, collate.

    ds = LatentDataset("cache/wan")                         # checks manifest.json (and a fingerprint)
    sampler = BucketBatchSampler(ds, batch_size=4, rank=r, world_size=w, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_latents, num_workers=4)

Batches hold one bucket's items; each epoch shuffles within buckets and the order of batches
(seeded, the same on every rank); each bucket is padded by wrapping to a multiple of world_size,
so every rank gets the same number of batches. `collate_latents` gives the keys NeMo AutoModel's
FlowMatchingPipeline reads: `video_latents` or `image_latents`, `text_embeddings`, and the
family's extra tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from loaders.formats.latents import resolution_of
from loaders.manifest import ManifestError, load as load_manifest

TEXT_KEYS = ("clip_hidden", "pooled_prompt_embeds", "clip_tokens", "t5_tokens", "text_mask", "text_embeddings_2", "text_mask_2",
             "image_embeds")  # HunyuanVideo 1.5's first-frame SigLIP embeddings ride with the text


class LatentDataset(Dataset):
    """Items of a finished latent cache, in plan order; item i is the torch.load of its file
    (weights_only) with `bucket_resolution` as a tensor. Paths resolve against the manifest's
    folder, so a cache that was moved still reads."""

    def __init__(self, path: str | Path, fingerprint: str | None = None):
        self.manifest = load_manifest(path, fingerprint)
        if self.manifest.get("kind") != "latents":
            raise ManifestError(f"{path}: a {self.manifest.get('kind')!r} output, not a latent cache")
        root = Path(self.manifest["_dir"])
        dataset = self.manifest["datasets"]["latents"]
        self.video = bool(dataset["video"])
        self.entries: list[dict] = []
        for shard in dataset["shards"]:
            self.entries.extend(json.loads((root / shard["path"]).read_text()))
        self.files = [str(root.joinpath(*Path(e["cache_file"]).parts[-2:])) for e in self.entries]
        self.resolutions = np.array([resolution_of(e) for e in self.entries], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        item = torch.load(self.files[index], map_location="cpu", weights_only=True)
        item["bucket_resolution"] = torch.tensor(self.resolutions[index])
        item["index"] = index
        return item

    def buckets(self) -> list[tuple[tuple[int, int], np.ndarray]]:
        """((W, H), item indices) of every bucket, smallest pixel count first."""
        keys, inverse = np.unique(self.resolutions, axis=0, return_inverse=True)
        order = np.argsort(keys[:, 0] * keys[:, 1], kind="stable")
        return [((int(keys[k, 0]), int(keys[k, 1])), np.flatnonzero(inverse.reshape(-1) == k)) for k in order]


def scaled_batch_size(resolution: tuple[int, int], batch_size: int, base_resolution: tuple[int, int]) -> int:
    """AutoModel's dynamic batch size: batch_size * base pixels / bucket pixels, at least 1."""
    return max(1, int(batch_size / (resolution[0] * resolution[1] / (base_resolution[0] * base_resolution[1]))))


class BucketBatchSampler(Sampler[list[int]]):
    """Same-bucket batches for rank `rank` of `world_size`; see the module docstring.

    `state_dict()` holds the epoch and the batches handed out; with DataLoader workers (which
    prefetch), pass the batches the training loop actually consumed: `state_dict(delivered=k)`."""

    def __init__(self, dataset: LatentDataset, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, base_resolution: tuple[int, int] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.buckets = dataset.buckets()
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last, self.base_resolution = shuffle, seed, drop_last, base_resolution
        self.epoch, self.consumed, self._start = 0, 0, 0

    def _size(self, resolution) -> int:
        return scaled_batch_size(resolution, self.batch_size, self.base_resolution) if self.base_resolution else self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in order."""
        rng = np.random.default_rng((self.seed, epoch))
        out = []
        for resolution, indices in self.buckets:
            if self.shuffle:
                indices = indices[rng.permutation(len(indices))]
            padded = np.resize(indices, -(-len(indices) // self.world_size) * self.world_size)  # wraps
            mine, size = padded[self.rank::self.world_size], self._size(resolution)
            stop = len(mine) - len(mine) % size if self.drop_last else len(mine)
            out.extend(mine[i:i + size].tolist() for i in range(0, stop, size))
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def __iter__(self):
        batches = self.batches(self.epoch)
        self._start = self.consumed
        while self.consumed < len(batches):
            self.consumed += 1
            yield batches[self.consumed - 1]
        self.epoch, self.consumed = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self, delivered: int | None = None) -> dict:
        consumed = self.consumed if delivered is None else self._start + delivered
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.seed = state["epoch"], state["consumed"], state["seed"]


def collate_latents(items: list[dict]) -> dict:
    """One bucket's items -> AutoModel's batch keys. Images: `image_latents` (B, C, h, w),
    `text_embeddings` (B, L, D) (T5), `pooled_prompt_embeds`, `clip_hidden`, `crop_offset`.
    Videos: `video_latents` (B, C, T, h, w), `text_embeddings` (B, L, D), the family's extras."""
    resolutions = {tuple(item["bucket_resolution"].tolist()) for item in items}
    if len(resolutions) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(resolutions)}; use BucketBatchSampler")
    batch: dict = {"bucket_resolution": torch.stack([i["bucket_resolution"] for i in items]),
                   "prompts": [i.get("prompt") for i in items], "index": torch.tensor([i["index"] for i in items])}
    if "video_latents" in items[0]:
        batch["data_type"] = "video"
        batch["video_latents"] = torch.cat([i["video_latents"] for i in items])
        batch["text_embeddings"] = torch.cat([i["text_embeddings"] for i in items])
        if items[0].get("first_frame") is not None:
            batch["first_frame"] = torch.stack([i["first_frame"] for i in items])
        extra = [k for k in TEXT_KEYS if items[0].get(k) is not None]
        batch.update({k: torch.cat([i[k] for i in items]) for k in extra})
    else:
        batch["data_type"] = "image"
        batch["image_latents"] = torch.stack([i["latent"] for i in items])
        batch["text_embeddings"] = torch.cat([i["prompt_embeds"] for i in items])
        batch["crop_offset"] = torch.tensor([list(i["crop_offset"]) for i in items])
        batch["original_resolution"] = torch.tensor([list(i["original_resolution"]) for i in items])
        batch.update({k: torch.cat([i[k] for i in items]) for k in TEXT_KEYS if k in items[0]})
    return batch
