"""The latents stage's config, and the settings its fingerprint is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prep import __version__
from prep.latents import buckets
from prep.pipeline.checksum import WEIGHTS, folder_checksum
from prep.pipeline.fingerprint import fingerprint

DEFAULT_UNIT_ITEMS = 64


@dataclass
class LatentsConfig:
    inputs: list[str]
    output: str
    family: str
    model: str | None = None
    vae: str | None = None
    text_encoders: list[str] = field(default_factory=list)
    preset: str | None = "512p"
    max_pixels: int | None = None
    frames: int = 33
    device: str = "cpu"
    precision: str | None = None  # bf16 on CUDA, fp32 on CPU
    deterministic: bool | None = None  # the family's default: FLUX samples, Wan/HunyuanVideo take the mean
    seed: int = 0
    batch_size: int | None = None
    unit_items: int | None = None
    decode_workers: int | None = None
    captions: str | None = None
    file_column: str = "file_name"
    caption_column: str | None = None
    caption_fallback: str = "none"  # none | filename (AutoModel's: the file stem, _ as spaces)
    skip_invalid: bool = False
    allow_empty_captions: bool = False
    vae_tiling: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def encoder_identity(components) -> dict:
    """{role: {path, xxh3_128 of its folder}} of every component: the cache's `encoders` in the manifest."""
    return {role: {"path": str(path.resolve()), WEIGHTS: folder_checksum(path)} for role, path in components.files()}


def fingerprint_of(settings: dict) -> str:
    """What decides the cache's bytes (weights, dtype, buckets, crop, frames, version), hashed."""
    return fingerprint(settings, compact=False)


def settings_of(config: LatentsConfig, family, encoders: dict, table: list[buckets.Bucket], quantization: int) -> dict:
    from prep.latents.families.hunyuan15 import VAE_TILING

    return {
        "family": config.family, "encoders": {role: e[WEIGHTS] for role, e in encoders.items()},
        "precision": config.precision, "device_type": config.device.split(":")[0].split(",")[0],
        "latent": "posterior mean" if config.deterministic else f"posterior sample, seed {config.seed} per item",
        "buckets": buckets.describe(table), "quantization": quantization,
        "resize": "bilinear per frame" if family.video else "lanczos", "crop": "cover, centre", "alpha": "over white",
        "frames": {"count": config.frames, "sampling": "linspace(0, total - 1, n).astype(int), n for every video (short ones repeat frames)",
                   "four_n_plus_one": family.four_n_plus_one} if family.video else None,
        "tool": {"name": "prep", "version": __version__},
        **({"vae_tiling": VAE_TILING} if config.vae_tiling else {}),  # only when on: older caches keep their fingerprint
        **({"empty_captions": "kept"} if config.allow_empty_captions else {}),  # which items the cache holds
    }
