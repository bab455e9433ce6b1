"""HunyuanVideo (videos): `video_latents` (1, 16, T', H/8, W/8) fp16 = latent * scaling_factor;
`text_embeddings` (1, L, D) with `text_mask` (1, L) from LLaMA, `text_embeddings_2` (1, D2) (CLIP
pooled) and `text_mask_2`."""

from __future__ import annotations

from prep.latents.families import Family, autocast, posterior, register, text_dtype

HUNYUAN_TEXT_TOKENS = 256  # HunyuanVideoPipeline.encode_prompt max_sequence_length


@register
class Hunyuan(Family):
    """HunyuanVideo (diffusers' HunyuanVideoPipeline components): LLaMA text encoder over the
    pipeline's prompt template (hidden state -3, template tokens cropped), CLIP pooled as text 2."""

    name, model_type, model_version = "hunyuan", "hunyuanvideo", "hunyuanvideo"
    help = "hunyuan: videos -> HunyuanVideo latents + LLaMA/CLIP."
    video, four_n_plus_one = True, True
    fields = ("video_latents", "text_embeddings", "text_mask", "text_embeddings_2", "text_mask_2")
    encoder_roles, tokenizer_roles = ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2")

    def load(self) -> None:
        from diffusers import AutoencoderKLHunyuanVideo
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
        from transformers import AutoModel, AutoTokenizer, CLIPTextModel

        c, dtype = self.components, text_dtype(self.device, self.precision)
        self.vae = AutoencoderKLHunyuanVideo.from_pretrained(c.vae).to(self.device).eval()
        llama = AutoModel.from_pretrained(c.text_encoders[0], dtype=dtype).to(self.device).eval()
        clip = CLIPTextModel.from_pretrained(c.text_encoders[1], dtype=dtype).to(self.device).eval()
        self.encoders = [llama, clip]
        self.template, self.crop_start = DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]
        self.tokenizers = [AutoTokenizer.from_pretrained(p) for p in c.tokenizers]
        for tok in self.tokenizers:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token

    def encode(self, pixels, captions, seeds):
        import torch

        with torch.no_grad():
            return self._encode(pixels, captions, seeds)

    def _encode(self, pixels, captions, seeds):
        import torch

        scale = self.vae.config.scaling_factor
        with autocast(self.device, self.precision):
            z = posterior(self.vae, self.pixels_to_tensor(pixels, self.device), seeds, self.deterministic)
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
