"""HunyuanVideo 1.5 (videos), what AutoModel's `hunyuan` processor and HunyuanAdapter use (diffusers'
HunyuanVideo15ImageToVideoPipeline parts): `video_latents` (1, 32, T', H/16, W/16) fp16 =
(z - shift_factor) * scaling_factor (z * scaling_factor without a shift); the pipeline's own
`encode_prompt`: Qwen2.5-VL `text_embeddings` (1, 1000, D) + `text_mask`, ByT5 glyph
`text_embeddings_2` (1, 256, D2) + `text_mask_2`; `encode_image` of the first frame: SigLIP
`image_embeds` (1, 729, 1152 for the real model)."""

from __future__ import annotations

import numpy as np

from prep.latents.families import Family, autocast, posterior, register, text_dtype, tie_t5_embeddings

# --vae-tiling: sample and latent tiles given together (16x apart). AutoModel's processor gives only 64 px
# sample tiles, leaving the latent tiles at 16, and diffusers 0.42 then returns latents of the wrong
# size (45x80 becomes 59x106 for 720p); that is not reproduced here.
VAE_TILING = {"tile_sample_min_height": 256, "tile_sample_min_width": 256, "tile_latent_min_height": 16,
              "tile_latent_min_width": 16, "tile_overlap_factor": 0.25}


@register
class Hunyuan15(Family):
    """HunyuanVideo 1.5 through diffusers' HunyuanVideo15ImageToVideoPipeline, built from the loaded
    parts without its transformer: the pipeline's own encode_prompt and encode_image give the text
    and first-frame fields exactly as AutoModel's processor stores them."""

    name, model_type, model_version = "hunyuan15", "hunyuanvideo", "hunyuanvideo-1.5"
    help = ("hunyuan15: videos -> HunyuanVideo 1.5 latents + Qwen2.5-VL/ByT5 text and SigLIP first-frame embeddings "
            "(what AutoModel's hunyuan adapter reads).")
    video, four_n_plus_one, tiling = True, True, True
    fields = ("video_latents", "text_embeddings", "text_mask", "text_embeddings_2", "text_mask_2", "image_embeds")
    encoder_roles = ("text_encoder", "text_encoder_2", "image_encoder")
    tokenizer_roles = ("tokenizer", "tokenizer_2", "feature_extractor")

    def load(self) -> None:
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15ImageToVideoPipeline
        from transformers import AutoTokenizer, Qwen2_5_VLTextModel, SiglipImageProcessor, SiglipVisionModel, T5EncoderModel

        c, self.text_dtype = self.components, text_dtype(self.device, self.precision)
        self.vae = AutoencoderKLHunyuanVideo15.from_pretrained(c.vae).to(self.device).eval()
        if self.vae_tiling:
            self.vae.enable_tiling(**VAE_TILING)
        qwen = Qwen2_5_VLTextModel.from_pretrained(c.text_encoders[0], dtype=self.text_dtype).to(self.device).eval()
        byt5 = T5EncoderModel.from_pretrained(c.text_encoders[1], dtype=self.text_dtype).to(self.device).eval()
        tie_t5_embeddings(byt5)
        siglip = SiglipVisionModel.from_pretrained(c.text_encoders[2], dtype=self.text_dtype).to(self.device).eval()
        self.encoders = [qwen, byt5, siglip]
        self.pipe = HunyuanVideo15ImageToVideoPipeline(
            text_encoder=qwen, tokenizer=AutoTokenizer.from_pretrained(c.tokenizers[0]), transformer=None, vae=self.vae,
            scheduler=None, text_encoder_2=byt5, tokenizer_2=AutoTokenizer.from_pretrained(c.tokenizers[1]), guider=None,
            image_encoder=siglip, feature_extractor=SiglipImageProcessor.from_pretrained(c.tokenizers[2]))

    def encode(self, pixels, captions, seeds):
        import torch

        with torch.no_grad():
            return self._encode(pixels, captions, seeds)

    def _encode(self, pixels, captions, seeds):
        import torch

        from PIL import Image

        shift, scale = getattr(self.vae.config, "shift_factor", None), self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            # One video a call: diffusers' causal-attention mask in this VAE does not broadcast over a batch.
            z = torch.cat([posterior(self.vae, self.pixels_to_tensor([p], self.device), [s], self.deterministic)
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
