"""Latent caches in NeMo AutoModel's layout, shared by `prep latents` (writer) and `loaders.latents`.

    OUT/metadata.json              {"shards": ["metadata_shard_0000.json", ...], "total_items", ...}
    OUT/metadata_shard_NNNN.json   [entry, ...]   one entry per item, SHARD_ITEMS a shard
    OUT/<W>x<H>/<md5>.pt           image item: torch.save dict (FLUX fields), weights_only loadable
    OUT/<W>x<H>/<md5>.meta         video item: torch.save dict (Wan / HunyuanVideo fields)
    OUT/manifest.json              prep's manifest, written last

Entries carry absolute `cache_file` paths, as AutoModel's readers open them as they are.
The bucket table (aspect ratios, presets) is AutoModel's `MultiTierBucketCalculator`'s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

METADATA = "metadata.json"
SHARD_ITEMS = 10000

# (width, height) ratios, 1:2 to 21:9, in AutoModel's order.
ASPECT_RATIOS = ((1, 2), (9, 16), (2, 3), (3, 4), (4, 5), (1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (5, 3),
                 (16, 9), (2, 1), (21, 9))
PRESETS = {"256p": 256 * 256, "512p": 512 * 512, "768p": 768 * 768, "1024p": 1024 * 1024, "1536p": 1536 * 1536}
IMAGE_QUANTIZATION, VIDEO_QUANTIZATION = 64, 16

IMAGE_SUFFIX, VIDEO_SUFFIX = ".pt", ".meta"


def shard_name(index: int) -> str:
    return f"metadata_shard_{index:04d}.json"


def bucket_dir(width: int, height: int) -> str:
    return f"{width}x{height}"


def cache_name(source: str, width: int, height: int, frames: int | None) -> str:
    """AutoModel's file name: md5 of `<abs path>_<W>x<H>` (images) or `..._<frames>` (videos)."""
    key = f"{Path(source).absolute()}_{bucket_dir(width, height)}" + (f"_{frames}" if frames is not None else "")
    return hashlib.md5(key.encode()).hexdigest() + (IMAGE_SUFFIX if frames is None else VIDEO_SUFFIX)


def resolution_of(entry: dict) -> tuple[int, int]:
    """(W, H) of a metadata entry: `bucket_resolution`, or `crop_resolution` in older image caches."""
    return tuple(entry.get("bucket_resolution") or entry["crop_resolution"])
