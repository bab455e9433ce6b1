"""Videos -> HunyuanVideo 1.5 caches (diffusers' HunyuanVideo15ImageToVideoPipeline parts), read by
AutoModel's video dataloader and handed to its HunyuanAdapter."""

import json

import pytest
import torch

from latent_helpers import *  # noqa: F401,F403
from latent_helpers import VIDEO_PIXELS, VIDEOS, captioned_copies, latents_cli


def test_hunyuan15_cache_holds_what_automodels_hunyuan_adapter_reads(tmp_path):
    from bench.latents import make_tiny_hunyuan15
    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15ImageToVideoPipeline
    from transformers import AutoTokenizer, Qwen2_5_VLTextModel, SiglipImageProcessor, SiglipVisionModel, T5EncoderModel

    model = make_tiny_hunyuan15(tmp_path / "model")
    inputs = captioned_copies(tmp_path / "in", [VIDEOS / "carphone_pristine.mp4", VIDEOS / "carphone_distorted.mp4"])
    (inputs / "carphone_pristine.txt").write_text('a phone call, a sign reading "OPEN"')  # quoted text: ByT5 glyph embeddings
    out = tmp_path / "out"
    latents_cli(inputs, "-o", out, "--family", "hunyuan15", "--model", model, "--max-pixels", VIDEO_PIXELS, "--frames", 10,
                "--batch-size", 2)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_type"] == "hunyuanvideo" and meta["processor"] == "hunyuan15"
    entries = json.loads((out / meta["shards"][0]).read_text())
    assert len(entries) == 2 and all(e["num_frames"] == 9 for e in entries)  # 10 -> 4n+1

    # The reference: the same parts in diffusers' own pipeline, one item at a time, as AutoModel's processor runs it.
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=Qwen2_5_VLTextModel.from_pretrained(model / "text_encoder"), tokenizer=AutoTokenizer.from_pretrained(model / "tokenizer"),
        transformer=None, vae=AutoencoderKLHunyuanVideo15.from_pretrained(model / "vae"), scheduler=None,
        text_encoder_2=T5EncoderModel.from_pretrained(model / "text_encoder_2"), tokenizer_2=AutoTokenizer.from_pretrained(model / "tokenizer_2"),
        guider=None, image_encoder=SiglipVisionModel.from_pretrained(model / "image_encoder"),
        feature_extractor=SiglipImageProcessor.from_pretrained(model / "feature_extractor"))
    cpu = torch.device("cpu")
    for entry in entries:
        w, h = entry["bucket_resolution"]
        data = torch.load(entry["cache_file"], weights_only=True)
        assert data["video_latents"].shape == (1, 32, 3, h // 16, w // 16) and data["video_latents"].dtype == torch.float16
        assert data["model_version"] == "hunyuanvideo-1.5" and data["model_type"] == "hunyuanvideo"
        with torch.no_grad():
            embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt=entry["prompt"], device=cpu, dtype=torch.float32)
        assert data["text_embeddings"].shape == embeds.shape == (1, 1000, 32)
        torch.testing.assert_close(data["text_embeddings"].float(), embeds, atol=2e-2, rtol=2e-2)  # stored bf16
        assert torch.equal(data["text_mask"], mask.long()) and torch.equal(data["text_mask_2"], mask_2.long())
        torch.testing.assert_close(data["text_embeddings_2"].float(), embeds_2, atol=2e-2, rtol=2e-2)
        assert data["image_embeds"].shape == (1, 4, 32) and data["image_embeds"].abs().sum() > 0
    glyph = {e["prompt"]: torch.load(e["cache_file"], weights_only=True)["text_mask_2"].sum().item() for e in entries}
    assert glyph['a phone call, a sign reading "OPEN"'] > 0 and sorted(glyph.values())[0] == 0  # no quoted text: zeros

    collate = pytest.importorskip("nemo_automodel.components.datasets.diffusion.collate_fns")
    adapters = pytest.importorskip("nemo_automodel.components.flow_matching.adapters")
    loader, _ = collate.build_video_multiresolution_dataloader(cache_dir=str(out), model_type="hunyuan", batch_size=2,
                                                               num_workers=0, drop_last=False, pin_memory=False)
    batch = next(iter(loader))
    assert batch["video_latents"].shape[0] == 2 and batch["image_embeds"].shape == (2, 4, 32)
    latents = batch["video_latents"].float()
    context = adapters.FlowMatchingContext(noisy_latents=latents, latents=latents, timesteps=torch.ones(2), sigma=torch.ones(2),
                                           task_type="i2v", data_type="video", device=cpu, dtype=torch.float32, batch=batch)
    prepared = adapters.HunyuanAdapter().prepare_inputs(context)  # i2v: it takes our image embeddings, not its zeros
    assert prepared["encoder_hidden_states"].shape[0] == 2 and torch.equal(prepared["image_embeds"], batch["image_embeds"].float())
    assert prepared["latents"].shape[1] == 2 * 32 + 1  # noisy latents + the first-frame condition latents and mask

    from loaders.latents import BucketBatchSampler, LatentDataset, collate_latents

    ours = LatentDataset(out)
    batch = collate_latents([ours[i] for i in next(iter(BucketBatchSampler(ours, batch_size=2, shuffle=False)))])
    assert batch["video_latents"].shape[:2] == (2, 32) and batch["image_embeds"].shape == (2, 4, 32)
    assert batch["text_mask_2"].shape == (2, 256)


def test_vae_tiling_encodes_as_diffusers_tiled_vae_and_is_part_of_the_fingerprint(tmp_path):
    from bench.latents import make_tiny_hunyuan15
    from diffusers import AutoencoderKLHunyuanVideo15

    from prep.latents.families.hunyuan15 import VAE_TILING
    from prep.latents.media import decode_video

    model = make_tiny_hunyuan15(tmp_path / "model")
    inputs = captioned_copies(tmp_path / "in", [VIDEOS / "carphone_pristine.mp4"])
    args = ["--family", "hunyuan15", "--model", model, "--max-pixels", 288 * 352, "--frames", 5]
    latents_cli(inputs, "-o", tmp_path / "tiled", *args, "--vae-tiling")
    latents_cli(inputs, "-o", tmp_path / "plain", *args)
    tiled, plain = (json.loads((tmp_path / k / "metadata_shard_0000.json").read_text())[0] for k in ("tiled", "plain"))
    assert tiled["bucket_resolution"][0] > 256  # wider than a tile: the tiled path runs
    ours = torch.load(tiled["cache_file"], weights_only=True)["video_latents"].float()
    untiled = torch.load(plain["cache_file"], weights_only=True)["video_latents"].float()

    vae = AutoencoderKLHunyuanVideo15.from_pretrained(model / "vae").eval()
    vae.enable_tiling(**VAE_TILING)
    from prep.latents.buckets import bucket_table

    table = bucket_table(288 * 352, 16)
    decoded = decode_video(tiled["video_path"], table, 5, True)
    pixels = torch.from_numpy(decoded["pixels"]).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        reference = (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).half()
    assert ours.shape == untiled.shape == (1, 32, 2, *(side // 16 for side in reversed(tiled["bucket_resolution"])))
    torch.testing.assert_close(ours, reference.float(), atol=2e-3, rtol=0)  # fp16 storage; torch's thread count differs
    assert (untiled - reference.float()).abs().max() > 1e-2  # the seams: tiling is not a no-op here
    manifests = [json.loads((tmp_path / k / "manifest.json").read_text())["fingerprint"] for k in ("tiled", "plain")]
    assert manifests[0] != manifests[1]
    refused = latents_cli(inputs, "-o", tmp_path / "wan", "--family", "wan", "--model", model, "--vae-tiling", check=False)
    assert refused.returncode == 2 and "--vae-tiling" in refused.stderr
