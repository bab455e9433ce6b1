"""Encoder families: load a diffusers-layout model's VAE and text encoders once, encode batches.

Each family writes the fields, dtypes, shapes and normalisation that NeMo AutoModel's processors
write (tools/diffusion/processors/{flux,wan,hunyuan}.py), so AutoModel's TextToImageDataset /
TextToVideoDataset and its training adapters read our caches unchanged:

- flux: `latent` (C, H/8, W/8) fp16 = (z - shift_factor) * scaling_factor, z sampled from the
  posterior (its mean with --deterministic); CLIP `clip_tokens` (1, 77) int64, `clip_hidden`
  (1, 77, D) bf16 = penultimate hidden state, `pooled_prompt_embeds` (1, D) bf16; T5
  `t5_tokens` (1, L) int64 and `prompt_embeds` (1, L, D) bf16, L = the T5 tokenizer's
  model_max_length (512 for FLUX.1-dev).
- wan: `video_latents` (1, 16, T', H/8, W/8) fp16 = (posterior mean - latents_mean) / latents_std;
  `text_embeddings` (1, 226, D) bf16 from UMT5 over the cleaned prompt, trimmed to its tokens and
  zero-padded to 226 as WanPipeline does; `first_frame` (H, W, 3) uint8.
- hunyuan: HunyuanVideo (diffusers' AutoencoderKLHunyuanVideo, LLaMA + CLIP text encoders):
  `video_latents` (1, 16, T', H/8, W/8) fp16 = latent * scaling_factor; `text_embeddings`
  (1, L, D) with `text_mask` (1, L), `text_embeddings_2` (1, D2) (CLIP pooled) and `text_mask_2`.
- hunyuan15: HunyuanVideo 1.5, what AutoModel's `hunyuan` processor and HunyuanAdapter use
  (diffusers' HunyuanVideo15ImageToVideoPipeline parts): `video_latents` (1, 32, T', H/16, W/16)
  fp16 = (z - shift_factor) * scaling_factor (z * scaling_factor without a shift); the pipeline's
  own `encode_prompt`: Qwen2.5-VL `text_embeddings` (1, 1000, D) + `text_mask`, ByT5 glyph
  `text_embeddings_2` (1, 256, D2) + `text_mask_2`; `encode_image` of the first frame: SigLIP
  `image_embeds` (1, 729, 1152 for the real model).

Sampling draws each item's noise from its own seeded generator, so an item's latent does not
depend on the batch it was encoded in (resume gives identical bytes).
"""

from __future__ import annotations

import contextlib
import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loaders.formats.latents import VIDEO_FAMILIES
from prep.errors import PrepError

FAMILIES = ("flux", "wan", "hunyuan", "hunyuan15")
WAN_TEXT_TOKENS = 226
# --vae-tiling: sample and latent tiles given together (16x apart). AutoModel's processor gives only 64 px
# sample tiles, leaving the latent tiles at 16, and diffusers 0.42 then returns latents of the wrong
# size (45x80 becomes 59x106 for 720p); that is not reproduced here.
VAE_TILING = {"tile_sample_min_height": 256, "tile_sample_min_width": 256, "tile_latent_min_height": 16,
              "tile_latent_min_width": 16, "tile_overlap_factor": 0.25}
HUNYUAN_TEXT_TOKENS = 256  # HunyuanVideoPipeline.encode_prompt max_sequence_length


@dataclass
class Components:
    """Where a family's parts come from: --model DIR's subfolders unless --vae / --text-encoder say."""

    vae: Path
    text_encoders: list[Path]  # HunyuanVideo 1.5's image encoder among them, last
    tokenizers: list[Path]  # and its image processor
    family: str = "flux"

    def files(self) -> list[tuple[str, Path]]:
        """(role, folder) of everything whose bytes go into the fingerprint."""
        encoders, tokenizers = ENCODER_ROLES[self.family]
        return [("vae", self.vae), *zip(encoders, self.text_encoders), *zip(tokenizers, self.tokenizers)]


# The diffusers subfolders of each family's encoders, and of their tokenizers (or image processor).
ENCODER_ROLES = {"flux": (["text_encoder", "text_encoder_2"], ["tokenizer", "tokenizer_2"]),
                 "wan": (["text_encoder"], ["tokenizer"]),
                 "hunyuan": (["text_encoder", "text_encoder_2"], ["tokenizer", "tokenizer_2"]),
                 "hunyuan15": (["text_encoder", "text_encoder_2", "image_encoder"], ["tokenizer", "tokenizer_2", "feature_extractor"])}


def resolve_components(family: str, model: str | None, vae: str | None, text_encoders: list[str]) -> Components:
    """Component folders of a diffusers-layout model (vae/, text_encoder/, tokenizer/ ...), overridden
    by --vae and --text-encoder (repeat it for FLUX's T5). A tokenizer is taken from the text
    encoder's own folder when it has one, else from the model's tokenizer folder."""
    names, tok_names = ENCODER_ROLES[family]
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


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; fp32 (no autocast) on CPU or with --precision fp32."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def item_noise(seed: int, shape: tuple, device: torch.device) -> torch.Tensor:
    """The item's own N(0, 1) draw: independent of batch composition and device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def _text_dtype(device: torch.device, precision: str) -> torch.dtype:
    # T5/UMT5 overflow in fp16; big text encoders are held in bf16 on the GPU (AutoModel does too).
    return torch.bfloat16 if device.type == "cuda" and precision != "fp32" else torch.float32


def _tie_t5_embeddings(model) -> None:
    # transformers>=5 no longer ties `shared` to `encoder.embed_tokens` on load (AutoModel's workaround).
    shared, embed = getattr(model, "shared", None), getattr(getattr(model, "encoder", None), "embed_tokens", None)
    if shared is not None and embed is not None and embed.weight.data_ptr() != shared.weight.data_ptr():
        embed.weight = shared.weight


def _posterior(vae, pixels: torch.Tensor, seeds: list[int], deterministic: bool) -> torch.Tensor:
    """Posterior mean, or mean + std * the items' own noise, in fp32."""
    dist = vae.encode(pixels).latent_dist
    mean = dist.mean.float()
    if deterministic:
        return mean
    noise = torch.stack([item_noise(s, tuple(mean.shape[1:]), mean.device) for s in seeds])
    return mean + dist.std.float() * noise


def _quiet() -> None:
    """No per-load progress bars or accelerate hints: prep prints its own progress."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


class Family:
    name: str = ""
    video: bool = False
    four_n_plus_one: bool = False
    default_deterministic: bool = True
    model_type: str = ""

    tiling: bool = False  # takes --vae-tiling

    def __init__(self, components: Components, device: str, precision: str, deterministic: bool, vae_tiling: bool = False):
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
    def pixels_to_tensor(batch: list[np.ndarray], device) -> torch.Tensor:
        """uint8 (H, W, 3) or (T, H, W, 3) -> float in [-1, 1], (B, 3, H, W) or (B, 3, T, H, W)."""
        array = torch.from_numpy(np.stack(batch)).to(device)
        x = array.float().div_(127.5).sub_(1.0)
        return x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(0, 4, 1, 2, 3)


class Flux(Family):
    name, model_type = "flux", "flux"
    default_deterministic = False

    def load(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        c, text_dtype = self.components, _text_dtype(self.device, self.precision)
        self.vae = AutoencoderKL.from_pretrained(c.vae).to(self.device).eval()
        clip = CLIPTextModel.from_pretrained(c.text_encoders[0], dtype=text_dtype).to(self.device).eval()
        t5 = T5EncoderModel.from_pretrained(c.text_encoders[1], dtype=text_dtype).to(self.device).eval()
        _tie_t5_embeddings(t5)
        self.encoders = [clip, t5]
        self.tokenizers = [AutoTokenizer.from_pretrained(p) for p in c.tokenizers]
        for tok in self.tokenizers:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        if self.vae.config.shift_factor is None:
            raise PrepError(f"{c.vae}: FLUX's VAE config has no shift_factor; is this a FLUX model?")

    @torch.no_grad()
    def encode(self, pixels, captions, seeds):
        shift, scale = self.vae.config.shift_factor, self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            z = _posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
            latents = ((z - shift) * scale).to(torch.float16).cpu()
            clip_tok, t5_tok = self.tokenizers
            clip_ids = clip_tok(captions, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                                return_tensors="pt").input_ids
            out = self.encoders[0](clip_ids.to(self.device), output_hidden_states=True)
            clip_hidden, pooled = out.hidden_states[-2].to(torch.bfloat16).cpu(), out.pooler_output.to(torch.bfloat16).cpu()
            t5_ids = t5_tok(captions, padding="max_length", max_length=t5_tok.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            prompt_embeds = self.encoders[1](t5_ids.to(self.device)).last_hidden_state.to(torch.bfloat16).cpu()
        return [{"latent": latents[i].clone(), "clip_tokens": clip_ids[i:i + 1].clone(), "clip_hidden": clip_hidden[i:i + 1].clone(),
                 "pooled_prompt_embeds": pooled[i:i + 1].clone(), "t5_tokens": t5_ids[i:i + 1].clone(),
                 "prompt_embeds": prompt_embeds[i:i + 1].clone()} for i in range(len(captions))]


def wan_prompt_clean(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy when installed, double html.unescape, collapsed whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class Wan(Family):
    name, model_type = "wan", "wan"
    video, four_n_plus_one = True, True

    def load(self) -> None:
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        c = self.components
        self.vae = AutoencoderKLWan.from_pretrained(c.vae).to(self.device).eval()
        encoder = UMT5EncoderModel.from_pretrained(c.text_encoders[0], dtype=_text_dtype(self.device, self.precision))
        _tie_t5_embeddings(encoder)
        self.encoders = [encoder.to(self.device).eval()]
        self.tokenizers = [AutoTokenizer.from_pretrained(c.tokenizers[0])]
        if self.tokenizers[0].pad_token is None:
            self.tokenizers[0].pad_token = self.tokenizers[0].eos_token
        config = self.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            raise PrepError(f"{c.vae}: Wan's VAE config needs latents_mean and latents_std")
        self.latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(config.latents_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, pixels, captions, seeds):
        with autocast(self.device, self.precision):
            z = _posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
            latents = ((z - self.latents_mean) / self.latents_std).to(torch.float16).cpu()
            tok = self.tokenizers[0]
            inputs = tok([wan_prompt_clean(c) for c in captions], max_length=WAN_TEXT_TOKENS, padding="max_length",
                         truncation=True, return_tensors="pt", return_attention_mask=True)
            mask = inputs.attention_mask.to(self.device)
            hidden = self.encoders[0](input_ids=inputs.input_ids.to(self.device), attention_mask=mask).last_hidden_state
            # WanPipeline: keep each prompt's own tokens, zeros after them.
            hidden = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(torch.bfloat16).cpu()
        return [{"video_latents": latents[i:i + 1].clone(), "text_embeddings": hidden[i:i + 1].clone(),
                 "first_frame": torch.from_numpy(np.ascontiguousarray(pixels[i][0]))} for i in range(len(captions))]


class Hunyuan(Family):
    """HunyuanVideo (diffusers' HunyuanVideoPipeline components): LLaMA text encoder over the
    pipeline's prompt template (hidden state -3, template tokens cropped), CLIP pooled as text 2."""

    name, model_type = "hunyuan", "hunyuanvideo"
    video, four_n_plus_one = True, True

    def load(self) -> None:
        from diffusers import AutoencoderKLHunyuanVideo
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
        from transformers import AutoModel, AutoTokenizer, CLIPTextModel

        c, text_dtype = self.components, _text_dtype(self.device, self.precision)
        self.vae = AutoencoderKLHunyuanVideo.from_pretrained(c.vae).to(self.device).eval()
        llama = AutoModel.from_pretrained(c.text_encoders[0], dtype=text_dtype).to(self.device).eval()
        clip = CLIPTextModel.from_pretrained(c.text_encoders[1], dtype=text_dtype).to(self.device).eval()
        self.encoders = [llama, clip]
        self.template, self.crop_start = DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]
        self.tokenizers = [AutoTokenizer.from_pretrained(p) for p in c.tokenizers]
        for tok in self.tokenizers:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token

    @torch.no_grad()
    def encode(self, pixels, captions, seeds):
        scale = self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            z = _posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
            latents = (z * scale).to(torch.float16).cpu()
            llama_tok, clip_tok = self.tokenizers
            inputs = llama_tok([self.template.format(c) for c in captions], max_length=HUNYUAN_TEXT_TOKENS + self.crop_start,
                               padding="max_length", truncation=True, return_tensors="pt", return_attention_mask=True)
            out = self.encoders[0](input_ids=inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device),
                                   output_hidden_states=True)
            embeds = out.hidden_states[-3][:, self.crop_start:].to(torch.bfloat16).cpu()
            mask = inputs.attention_mask[:, self.crop_start:].clone()
            clip_ids = clip_tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            pooled = self.encoders[1](clip_ids.to(self.device)).pooler_output.to(torch.bfloat16).cpu()
        return [{"video_latents": latents[i:i + 1].clone(), "text_embeddings": embeds[i:i + 1].clone(), "text_mask": mask[i:i + 1].clone(),
                 "text_embeddings_2": pooled[i:i + 1].clone(), "text_mask_2": torch.ones(1, 1, dtype=torch.int64)}
                for i in range(len(captions))]


class Hunyuan15(Family):
    """HunyuanVideo 1.5 through diffusers' HunyuanVideo15ImageToVideoPipeline, built from the loaded
    parts without its transformer: the pipeline's own encode_prompt and encode_image give the text
    and first-frame fields exactly as AutoModel's processor stores them."""

    name, model_type = "hunyuan15", "hunyuanvideo"
    video, four_n_plus_one, tiling = True, True, True

    def load(self) -> None:
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15ImageToVideoPipeline
        from transformers import AutoTokenizer, Qwen2_5_VLTextModel, SiglipImageProcessor, SiglipVisionModel, T5EncoderModel

        c, self.text_dtype = self.components, _text_dtype(self.device, self.precision)
        self.vae = AutoencoderKLHunyuanVideo15.from_pretrained(c.vae).to(self.device).eval()
        if self.vae_tiling:
            self.vae.enable_tiling(**VAE_TILING)
        qwen = Qwen2_5_VLTextModel.from_pretrained(c.text_encoders[0], dtype=self.text_dtype).to(self.device).eval()
        byt5 = T5EncoderModel.from_pretrained(c.text_encoders[1], dtype=self.text_dtype).to(self.device).eval()
        _tie_t5_embeddings(byt5)
        siglip = SiglipVisionModel.from_pretrained(c.text_encoders[2], dtype=self.text_dtype).to(self.device).eval()
        self.encoders = [qwen, byt5, siglip]
        self.pipe = HunyuanVideo15ImageToVideoPipeline(
            text_encoder=qwen, tokenizer=AutoTokenizer.from_pretrained(c.tokenizers[0]), transformer=None, vae=self.vae,
            scheduler=None, text_encoder_2=byt5, tokenizer_2=AutoTokenizer.from_pretrained(c.tokenizers[1]), guider=None,
            image_encoder=siglip, feature_extractor=SiglipImageProcessor.from_pretrained(c.tokenizers[2]))

    @torch.no_grad()
    def encode(self, pixels, captions, seeds):
        from PIL import Image

        shift, scale = getattr(self.vae.config, "shift_factor", None), self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            # One video a call: diffusers' causal-attention mask in this VAE does not broadcast over a batch.
            z = torch.cat([_posterior(self.vae, self.pixels_to_tensor([p], self.device), [s], self.deterministic)
                           for p, s in zip(pixels, seeds)])
            latents = ((z - shift) * scale if shift else z * scale).to(torch.float16).cpu()
            embeds, mask, embeds_2, mask_2 = (t.cpu() for t in self.pipe.encode_prompt(
                prompt=list(captions), device=self.device, dtype=self.text_dtype, batch_size=len(captions)))
            first = [Image.fromarray(np.ascontiguousarray(p[0])) for p in pixels]
            image_embeds = self.pipe.encode_image(image=first, batch_size=1, device=self.device, dtype=self.text_dtype).cpu()
        return [{"video_latents": latents[i:i + 1].clone(), "text_embeddings": embeds[i:i + 1].to(torch.bfloat16),
                 "text_mask": mask[i:i + 1].to(torch.int64), "text_embeddings_2": embeds_2[i:i + 1].to(torch.bfloat16),
                 "text_mask_2": mask_2[i:i + 1].to(torch.int64), "image_embeds": image_embeds[i:i + 1].to(torch.bfloat16)}
                for i in range(len(captions))]


CLASSES = {"flux": Flux, "wan": Wan, "hunyuan": Hunyuan, "hunyuan15": Hunyuan15}
assert set(VIDEO_FAMILIES) == {n for n, c in CLASSES.items() if c.video}


def family_class(name: str) -> type[Family]:
    return CLASSES[name]


def cache_dict(family: type[Family], tensors: dict, meta: dict) -> dict:
    """The torch.save dict of one item: the family's tensors plus the metadata AutoModel stores
    (tuples, strings, numbers only: loadable with weights_only=True)."""
    if not family.video:
        return {**tensors, "crop_offset": tuple(meta["crop_offset"]), "original_resolution": tuple(meta["original_resolution"]),
                "bucket_resolution": tuple(meta["bucket_resolution"]), "prompt": meta["prompt"], "image_path": meta["path"],
                "bucket_id": meta["bucket_id"], "aspect_ratio": meta["aspect_ratio"], "model_type": family.model_type}
    return {**tensors, "original_resolution": tuple(meta["original_resolution"]), "bucket_resolution": tuple(meta["bucket_resolution"]),
            "bucket_id": meta["bucket_id"], "aspect_ratio": meta["aspect_ratio"], "num_frames": meta["num_frames"],
            "prompt": meta["prompt"], "video_path": meta["path"], "deterministic_latents": meta["deterministic"],
            "model_version": {"wan": "wan2.1", "hunyuan": "hunyuanvideo", "hunyuan15": "hunyuanvideo-1.5"}[family.name], "processing_mode": "video",
            "model_type": family.model_type}
