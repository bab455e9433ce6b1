"""Latent families by name, one file each (flux, wan, hunyuan, hunyuan15), registered on import.

A family is a subclass of Family with `@register`: its class attributes are the registry's facts
(the CLI's --family choices and help, model_type, model_version, cache fields, component roles);
an instance loads the VAE and text encoders once and encodes batches. Each family writes the
fields, dtypes, shapes and normalisation that NeMo AutoModel's processors write
(tools/diffusion/processors/), so AutoModel's datasets and training adapters read our caches unchanged.

Sampling draws each item's noise from its own seeded generator, so an item's latent does not
depend on the batch it was encoded in (resume gives identical bytes). torch is imported only when
a family loads, so listing them (--help) stays fast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prep.errors import PrepError
from prep.registry import Registry

FAMILIES = Registry("prep.latents.families", ("flux", "wan", "hunyuan", "hunyuan15"))
register, names, family_class = FAMILIES.register, FAMILIES.names, FAMILIES.get


@dataclass
class Components:
    """Where a family's parts come from: --model DIR's subfolders unless --vae / --text-encoder say."""

    vae: Path
    text_encoders: list[Path]  # HunyuanVideo 1.5's image encoder among them, last
    tokenizers: list[Path]  # and its image processor
    family: str = "flux"

    def files(self) -> list[tuple[str, Path]]:
        """(role, folder) of everything whose bytes go into the fingerprint."""
        family = family_class(self.family)
        return [("vae", self.vae), *zip(family.encoder_roles, self.text_encoders), *zip(family.tokenizer_roles, self.tokenizers)]


def resolve_components(family: str, model: str | None, vae: str | None, text_encoders: list[str]) -> Components:
    """Component folders of a diffusers-layout model (vae/, text_encoder/, tokenizer/ ...), overridden
    by --vae and --text-encoder (repeat it for FLUX's T5). A tokenizer is taken from the text
    encoder's own folder when it has one, else from the model's tokenizer folder."""
    names, tok_names = family_class(family).encoder_roles, family_class(family).tokenizer_roles
    root = Path(model) if model else None
    if root is not None and not root.is_dir():
        raise PrepError(f"--model {model}: not a folder (expected a diffusers layout with vae/, text_encoder/, tokenizer/)")

    def need(path: Path | None, what: str, option: str) -> Path:
        if path is None:
            raise PrepError(f"{family}: no {what} folder; pass --model DIR (a diffusers layout) or {option}")
        if not path.is_dir():
            raise PrepError(f"{family}: no {what} folder at {path}; pass --model DIR or {option}")
        return path

    vae_dir = need(Path(vae) if vae else (root / "vae" if root else None), "vae", "--vae DIR")
    repeat = f" ({len(names)} times: {', '.join(names)})" if len(names) > 1 else ""
    encoders, tokenizers = [], []
    for i, name in enumerate(names):
        given = Path(text_encoders[i]) if i < len(text_encoders) else None
        encoder = need(given or (root / name if root else None), name, f"--text-encoder DIR{repeat}")
        encoders.append(encoder)
        own = [p for p in ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "preprocessor_config.json")
               if (encoder / p).exists()]
        tokenizers.append(encoder if own else need(root / tok_names[i] if root else None, tok_names[i],
                                                   f"--text-encoder DIR holding its tokenizer files{repeat}"))
    return Components(vae_dir, encoders, tokenizers, family)


def autocast(device, precision: str):
    """bf16/fp16 autocast on CUDA; fp32 (no autocast) on CPU or with --precision fp32."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def item_noise(seed: int, shape: tuple, device):
    """The item's own N(0, 1) draw: independent of batch composition and device."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def text_dtype(device, precision: str):
    import torch

    # T5/UMT5 overflow in fp16; big text encoders are held in bf16 on the GPU (AutoModel does too).
    return torch.bfloat16 if device.type == "cuda" and precision != "fp32" else torch.float32


def tie_t5_embeddings(model) -> None:
    # transformers>=5 no longer ties `shared` to `encoder.embed_tokens` on load (AutoModel's workaround).
    shared, embed = getattr(model, "shared", None), getattr(getattr(model, "encoder", None), "embed_tokens", None)
    if shared is not None and embed is not None and embed.weight.data_ptr() != shared.weight.data_ptr():
        embed.weight = shared.weight


def posterior(vae, pixels, seeds: list[int], deterministic: bool):
    """Posterior mean, or mean + std * the items' own noise, in fp32."""
    import torch

    dist = vae.encode(pixels).latent_dist
    mean = dist.mean.float()
    if deterministic:
        return mean
    noise = torch.stack([item_noise(s, tuple(mean.shape[1:]), mean.device) for s in seeds])
    return mean + dist.std.float() * noise


def _quiet() -> None:
    """No per-load progress bars, accelerate hints or optional packages' import-time warnings:
    prep prints its own progress, and its errors as one line."""
    from prep.quiet import quiet_import_warnings

    quiet_import_warnings()
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


class Family:
    """A latent family: its registry facts (class attributes) and, once loaded, its models."""

    name: str = ""
    help: str = ""  # one sentence for --family's help
    video: bool = False
    four_n_plus_one: bool = False
    default_deterministic: bool = True
    model_type: str = ""  # the cache's model_type, as AutoModel's processor writes it
    model_version: str = ""  # video caches' model_version
    fields: tuple[str, ...] = ()  # the tensors each item's dict holds
    # The diffusers subfolders of its encoders, and of their tokenizers (or image processor).
    encoder_roles: tuple[str, ...] = ()
    tokenizer_roles: tuple[str, ...] = ()
    tiling: bool = False  # takes --vae-tiling

    def __init__(self, components: Components, device: str, precision: str, deterministic: bool, vae_tiling: bool = False):
        import torch

        _quiet()
        self.components, self.device, self.precision = components, torch.device(device), precision
        self.deterministic, self.vae_tiling = deterministic, vae_tiling
        try:
            self.load()
        except PrepError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # a wrong or incomplete model folder
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PrepError(f"{self.name}: could not load the models ({components.vae.parent}): {message}") from None

    def load(self) -> None:
        raise NotImplementedError

    def encode(self, pixels: list[np.ndarray], captions: list[str], seeds: list[int]) -> list[dict]:
        """Per item: the family's tensors (no metadata), on the CPU, in their stored dtypes."""
        raise NotImplementedError

    def identity(self) -> dict:
        """Classes and configs of the loaded parts, for the manifest."""
        return {"family": self.name, "vae_class": type(self.vae).__name__,
                "text_encoder_classes": [type(e).__name__ for e in self.encoders]}

    @staticmethod
    def pixels_to_tensor(batch: list[np.ndarray], device):
        """uint8 (H, W, 3) or (T, H, W, 3) -> float in [-1, 1], (B, 3, H, W) or (B, 3, T, H, W)."""
        import torch

        array = torch.from_numpy(np.stack(batch)).to(device)
        x = array.float().div_(127.5).sub_(1.0)
        return x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(0, 4, 1, 2, 3)


def cache_dict(family: type["Family"], tensors: dict, meta: dict) -> dict:
    """The torch.save dict of one item: the family's tensors plus the metadata AutoModel stores
    (tuples, strings, numbers only: loadable with weights_only=True)."""
    if not family.video:
        return {**tensors, "crop_offset": tuple(meta["crop_offset"]), "original_resolution": tuple(meta["original_resolution"]),
                "bucket_resolution": tuple(meta["bucket_resolution"]), "prompt": meta["prompt"], "image_path": meta["path"],
                "bucket_id": meta["bucket_id"], "aspect_ratio": meta["aspect_ratio"], "model_type": family.model_type}
    return {**tensors, "original_resolution": tuple(meta["original_resolution"]), "bucket_resolution": tuple(meta["bucket_resolution"]),
            "bucket_id": meta["bucket_id"], "aspect_ratio": meta["aspect_ratio"], "num_frames": meta["num_frames"],
            "prompt": meta["prompt"], "video_path": meta["path"], "deterministic_latents": meta["deterministic"],
            "model_version": family.model_version, "processing_mode": "video",
            "model_type": family.model_type}
