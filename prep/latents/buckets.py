"""Resolution buckets: AutoModel's `MultiTierBucketCalculator` table, nearest bucket, cover + centre crop.

A bucket is the largest W x H of one of the 14 aspect ratios (loaders.formats.latents.ASPECT_RATIOS)
within the pixel budget, sides multiples of the quantization (64 for images, 16 for video). The
rounding (Python's round-half-even of int(sqrt(P / r)) / q) and the shrink loop reproduce AutoModel's,
so an item lands in the bucket AutoModel's own preprocessing would pick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loaders.formats.latents import ASPECT_RATIOS, PRESETS


@dataclass(frozen=True)
class Bucket:
    id: int
    width: int
    height: int

    @property
    def aspect_ratio(self) -> float:
        return self.width / self.height

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"


def max_pixels_of(preset: str | None, max_pixels: int | None) -> int:
    """The pixel budget: --max-pixels, else the preset's (256p..1536p); AutoModel's default is 256p."""
    if max_pixels:
        return int(max_pixels)
    if preset is None:
        return PRESETS["256p"]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _largest(ratio: float, max_pixels: int, q: int) -> tuple[int, int] | None:
    height = q * round(int(math.sqrt(max_pixels / ratio)) / q)
    width = q * round(int(height * ratio) / q)
    while width * height > max_pixels:  # rounding up may overshoot the budget: trim the longer side
        if width >= height:
            width -= q
        else:
            height -= q
    return (width, height) if width >= q and height >= q else None


def bucket_table(max_pixels: int, quantization: int) -> list[Bucket]:
    """Distinct bucket resolutions of the 14 aspect ratios, ordered by W/H; ids are positions."""
    sizes = {size for w, h in ASPECT_RATIOS if (size := _largest(w / h, max_pixels, quantization))}
    ordered = sorted(sizes, key=lambda s: s[0] / s[1])
    return [Bucket(i, w, h) for i, (w, h) in enumerate(ordered)]


def nearest_bucket(table: list[Bucket], width: int, height: int) -> Bucket:
    """The bucket whose W/H is closest to width/height (the first on ties, as AutoModel's min())."""
    ratios = np.array([b.aspect_ratio for b in table])
    return table[int(np.argmin(np.abs(ratios - width / height)))]


def cover_crop(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int, int, int]:
    """(resized W, resized H, left, top): scale to cover the target, then centre-crop it.

    AutoModel's geometry: scale = max(tw / w, th / h), sizes truncated with int(); we also never
    let truncation fall one pixel short of the target (which AutoModel's crop would pad with black)."""
    scale = max(target_w / width, target_h / height)
    new_w, new_h = max(target_w, int(width * scale)), max(target_h, int(height * scale))
    return new_w, new_h, (new_w - target_w) // 2, (new_h - target_h) // 2


def describe(table: list[Bucket]) -> list[dict]:
    """The table as the manifest records it (part of the fingerprint)."""
    return [{"id": b.id, "resolution": [b.width, b.height], "aspect_ratio": b.aspect_ratio} for b in table]
