"""FLUX.1 (images): `latent` (C, H/8, W/8) fp16 = (z - shift_factor) * scaling_factor, z sampled from
the posterior (its mean with --deterministic); CLIP `clip_tokens` (1, 77) int64, `clip_hidden`
(1, 77, D) bf16 = penultimate hidden state, `pooled_prompt_embeds` (1, D) bf16; T5 `t5_tokens`
(1, L) int64 and `prompt_embeds` (1, L, D) bf16, L = the T5 tokenizer's model_max_length
(512 for FLUX.1-dev). As AutoModel's flux processor writes them."""

from __future__ import annotations

from prep.errors import PrepError
from prep.latents.families import Family, autocast, posterior, register, text_dtype, tie_t5_embeddings


@register
class Flux(Family):
    name, model_type = "flux", "flux"
    help = "flux: images -> FLUX.1 latents + CLIP/T5."
    default_deterministic = False
    fields = ("latent", "clip_tokens", "clip_hidden", "pooled_prompt_embeds", "t5_tokens", "prompt_embeds", "crop_offset")
    encoder_roles, tokenizer_roles = ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2")

    def load(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        c, dtype = self.components, text_dtype(self.device, self.precision)
        self.vae = AutoencoderKL.from_pretrained(c.vae).to(self.device).eval()
        clip = CLIPTextModel.from_pretrained(c.text_encoders[0], dtype=dtype).to(self.device).eval()
        t5 = T5EncoderModel.from_pretrained(c.text_encoders[1], dtype=dtype).to(self.device).eval()
        tie_t5_embeddings(t5)
        self.encoders = [clip, t5]
        self.tokenizers = [AutoTokenizer.from_pretrained(p) for p in c.tokenizers]
        for tok in self.tokenizers:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        if self.vae.config.shift_factor is None:
            raise PrepError(f"{c.vae}: FLUX's VAE config has no shift_factor; is this a FLUX model?")

    def encode(self, pixels, captions, seeds):
        import torch

        with torch.no_grad():
            return self._encode(pixels, captions, seeds)

    def _encode(self, pixels, captions, seeds):
        import torch

        shift, scale = self.vae.config.shift_factor, self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            z = posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
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
