"""Videos -> HunyuanVideo caches (diffusers' AutoencoderKLHunyuanVideo, LLaMA + CLIP), tiny and real."""

import json

import pytest
import torch

from latent_helpers import *  # noqa: F401,F403
from latent_helpers import VIDEO_PIXELS, VIDEOS, captioned_copies, latents_cli


def test_hunyuan_cache_has_scaled_latents_and_cropped_llama_embeddings(tmp_path):
    from bench.latents import make_tiny_hunyuan
    from diffusers import AutoencoderKLHunyuanVideo

    model = make_tiny_hunyuan(tmp_path / "model")
    inputs = captioned_copies(tmp_path / "in", [VIDEOS / "carphone_pristine.mp4", VIDEOS / "carphone_distorted.mp4"])
    out = tmp_path / "out"
    latents_cli(inputs, "-o", out, "--family", "hunyuan", "--model", model, "--max-pixels", VIDEO_PIXELS, "--frames", 10)
    meta = json.loads((out / "metadata.json").read_text())
    entries = json.loads((out / meta["shards"][0]).read_text())
    assert len(entries) == 2 and all(e["num_frames"] == 9 for e in entries)  # 10 -> 4n+1
    vae = AutoencoderKLHunyuanVideo.from_pretrained(model / "vae")
    for entry in entries:
        w, h = entry["bucket_resolution"]
        data = torch.load(entry["cache_file"], weights_only=True)
        assert data["video_latents"].shape == (1, 16, 3, h // 8, w // 8) and data["video_latents"].dtype == torch.float16
        assert data["text_embeddings"].shape == (1, 256, 32) and data["text_mask"].shape == (1, 256)
        assert data["text_mask"][0, 0] == 1 and data["text_mask"][0, -1] == 0  # the template's 95 tokens are cropped
        assert data["text_embeddings_2"].shape == (1, 32)
        frames = data.get("first_frame")
        assert frames is None and data["model_type"] == "hunyuanvideo"
    collate = pytest.importorskip("nemo_automodel.components.datasets.diffusion.collate_fns")
    loader, _ = collate.build_video_multiresolution_dataloader(cache_dir=str(out), model_type="hunyuan", batch_size=2,
                                                               num_workers=0, drop_last=False, pin_memory=False)
    batch = next(iter(loader))
    assert batch["video_latents"].shape[0] == 2 and batch["text_mask"].shape == (2, 256)
    assert vae.config.scaling_factor == pytest.approx(0.476986)
