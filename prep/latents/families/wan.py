"""Wan 2.1 (videos): `video_latents` (1, 16, T', H/8, W/8) fp16 = (posterior mean - latents_mean) /
latents_std; `text_embeddings` (1, 226, D) bf16 from UMT5 over the cleaned prompt, trimmed to its
tokens and zero-padded to 226 as WanPipeline does; `first_frame` (H, W, 3) uint8."""

from __future__ import annotations

import html
import re

import numpy as np

from prep.errors import PrepError
from prep.latents.families import Family, autocast, posterior, register, text_dtype, tie_t5_embeddings

WAN_TEXT_TOKENS = 226


def wan_prompt_clean(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy when installed, double html.unescape, collapsed whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


@register
class Wan(Family):
    name, model_type, model_version = "wan", "wan", "wan2.1"
    help = "wan: videos -> Wan 2.1 latents + UMT5."
    video, four_n_plus_one = True, True
    fields = ("video_latents", "text_embeddings", "first_frame")
    encoder_roles, tokenizer_roles = ("text_encoder",), ("tokenizer",)

    def load(self) -> None:
        import torch

        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        c = self.components
        self.vae = AutoencoderKLWan.from_pretrained(c.vae).to(self.device).eval()
        encoder = UMT5EncoderModel.from_pretrained(c.text_encoders[0], dtype=text_dtype(self.device, self.precision))
        tie_t5_embeddings(encoder)
        self.encoders = [encoder.to(self.device).eval()]
        self.tokenizers = [AutoTokenizer.from_pretrained(c.tokenizers[0])]
        if self.tokenizers[0].pad_token is None:
            self.tokenizers[0].pad_token = self.tokenizers[0].eos_token
        config = self.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            raise PrepError(f"{c.vae}: Wan's VAE config needs latents_mean and latents_std")
        self.latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(config.latents_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)

    def encode(self, pixels, captions, seeds):
        import torch

        with torch.no_grad():
            return self._encode(pixels, captions, seeds)

    def _encode(self, pixels, captions, seeds):
        import torch

        with autocast(self.device, self.precision):
            z = posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
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
