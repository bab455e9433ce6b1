"""Images -> FLUX caches with tiny real diffusers/transformers models; AutoModel reads them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latent_helpers import *  # noqa: F401,F403
from latent_helpers import IMAGES, captioned_copies, latents_cli


def _items(out):
    meta = json.loads((out / "metadata.json").read_text())
    return [e for shard in meta["shards"] for e in json.loads((out / shard).read_text())]


def test_flux_cache_has_automodels_layout_fields_and_dtypes(flux_cache, image_dir):
    items = _items(flux_cache)
    assert len(items) == len([p for p in image_dir.iterdir() if p.suffix != ".jsonl"])
    for entry in items:
        w, h = entry["bucket_resolution"]
        assert entry["cache_file"].startswith(str(flux_cache)) and f"/{w}x{h}/" in entry["cache_file"]
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 256 * 256
        data = torch.load(entry["cache_file"], weights_only=True)
        assert data["latent"].dtype == torch.float16 and data["latent"].shape == (16, h // 8, w // 8)
        assert data["clip_tokens"].shape == (1, 77) and data["clip_tokens"].dtype == torch.int64
        assert data["clip_hidden"].shape == (1, 77, 32) and data["clip_hidden"].dtype == torch.bfloat16
        assert data["pooled_prompt_embeds"].shape == (1, 32) and data["pooled_prompt_embeds"].dtype == torch.bfloat16
        assert data["t5_tokens"].shape == (1, 32) and data["prompt_embeds"].shape == (1, 32, 32)
        assert data["prompt_embeds"].dtype == torch.bfloat16
        assert data["prompt"] == entry["prompt"] and data["image_path"] == entry["image_path"]
        assert tuple(data["crop_offset"]) == tuple(entry["crop_offset"]) and data["model_type"] == "flux"
    manifest = json.loads((flux_cache / "manifest.json").read_text())
    assert manifest["schema"] == "prep.manifest/1" and manifest["kind"] == "latents"
    assert {"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"} <= set(manifest["encoders"]) and "tokenizer" not in manifest


def test_automodel_text_to_image_dataloader_reads_our_cache(flux_cache):
    collate = pytest.importorskip("nemo_automodel.components.datasets.diffusion.collate_fns")
    loader, sampler = collate.build_text_to_image_multiresolution_dataloader(
        cache_dir=str(flux_cache), batch_size=2, num_workers=0, drop_last=False, pin_memory=False)
    seen = 0
    for batch in loader:
        b, c, h, w = batch["image_latents"].shape
        assert c == 16 and batch["text_embeddings"].shape[:2] == (b, 32) and batch["pooled_prompt_embeds"].shape == (b, 32)
        assert batch["clip_hidden"].shape == (b, 77, 32)
        assert (batch["metadata"]["crop_resolution"][0] == torch.tensor([w * 8, h * 8])).all()
        seen += b
    assert seen == len(_items(flux_cache))


def test_deterministic_flux_latent_is_shifted_scaled_posterior_mean(tmp_path, tiny_flux):
    """Against an independent computation: AutoModel's resize_and_crop, diffusers' VAE and
    transformers' encoders loaded from the same folder."""
    from diffusers import AutoencoderKL
    from nemo_automodel.components.datasets.diffusion.multi_tier_bucketing import MultiTierBucketCalculator
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    inputs = captioned_copies(tmp_path / "in", [IMAGES / "coffee.png", IMAGES / "rocket.jpg"])
    out = tmp_path / "out"
    latents_cli(inputs, "-o", out, "--family", "flux", "--model", tiny_flux, "--preset", "256p", "--deterministic")
    vae = AutoencoderKL.from_pretrained(tiny_flux / "vae").eval()
    calc = MultiTierBucketCalculator(quantization=64, max_pixels=256 * 256)
    clip, t5 = CLIPTextModel.from_pretrained(tiny_flux / "text_encoder"), T5EncoderModel.from_pretrained(tiny_flux / "text_encoder_2")
    for entry in _items(out):
        image = Image.open(entry["image_path"]).convert("RGB")
        bucket = calc.get_bucket_for_image(*image.size)
        cropped, offset = calc.resize_and_crop(image, *bucket["resolution"], crop_mode="center")
        x = torch.from_numpy(np.array(cropped)).float().div(255).sub(0.5).div(0.5).permute(2, 0, 1)[None]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            want = ((z - vae.config.shift_factor) * vae.config.scaling_factor).half()[0]
        data = torch.load(entry["cache_file"], weights_only=True)
        assert tuple(data["crop_offset"]) == tuple(offset) and list(bucket["resolution"]) == entry["bucket_resolution"]
        torch.testing.assert_close(data["latent"], want, atol=2e-3, rtol=2e-3)
        tok = AutoTokenizer.from_pretrained(tiny_flux / "tokenizer")
        ids = tok(entry["prompt"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = clip(ids, output_hidden_states=True)
        torch.testing.assert_close(data["clip_hidden"], hidden.hidden_states[-2].bfloat16())
        torch.testing.assert_close(data["pooled_prompt_embeds"], hidden.pooler_output.bfloat16())
        tok2 = AutoTokenizer.from_pretrained(tiny_flux / "tokenizer_2")
        ids2 = tok2(entry["prompt"], padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.testing.assert_close(data["prompt_embeds"], t5(ids2).last_hidden_state.bfloat16())


def test_image_modes_exif_alpha_palette_16bit(tmp_path):
    from prep.latents.media import _to_rgb

    base = np.asarray(Image.open(IMAGES / "astronaut.png").convert("RGB").resize((64, 32)))
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    Image.fromarray(base).save(path, exif=exif, quality=95)
    assert _to_rgb(Image.open(path)).shape == (64, 32, 3)
    rgba = Image.fromarray(np.dstack([base, np.zeros(base.shape[:2], np.uint8)]), "RGBA")
    assert (_to_rgb(rgba) == 255).all()  # fully transparent: the white background
    palette = Image.fromarray(base).convert("P")
    palette.info["transparency"] = 0
    assert _to_rgb(palette).shape == (32, 64, 3)
    sixteen = Image.fromarray(np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 32)
    assert sixteen.mode.startswith("I;16")
    rgb = _to_rgb(sixteen)
    assert rgb.dtype == np.uint8 and rgb.max() > 200 and rgb[0, 0, 0] == 0  # scaled, not clipped at 255
    gray = _to_rgb(Image.open(IMAGES / "page.png"))
    assert gray.ndim == 3 and gray.shape[2] == 3


def test_missing_caption_is_a_one_line_error(tmp_path, tiny_flux):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "coffee.png").write_bytes((IMAGES / "coffee.png").read_bytes())
    result = latents_cli(inputs, "-o", tmp_path / "out", "--family", "flux", "--model", tiny_flux, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {inputs / 'coffee.png'}: no caption")


def test_captions_from_a_column_of_a_local_dataset(tmp_path, tiny_flux):
    """--captions: a Parquet file, a save_to_disk folder, a JSONL with other column names; the
    sidecar .txt still wins; a row without the columns is a one-line error naming file and row."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prep.latents import media

    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    files = [inputs / "coffee.png", inputs / "sub" / "astronaut.png", inputs / "sub" / "own.png"]
    for f in files:
        f.write_bytes((IMAGES / "coffee.png").read_bytes())
    files[2].with_suffix(".txt").write_text("from the sidecar")
    rows = {"path": ["coffee.png", "sub/astronaut.png", "own.png"], "prompt_en": ["a cup", "a person in space", "ignored"],
            "extra": [1, 2, 3]}
    pq.write_table(pa.table(rows), tmp_path / "caps.parquet")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"file": p, "caption": c}) + "\n" for p, c in zip(rows["path"], rows["prompt_en"])))
    want = {str(files[0]): "a cup", str(files[1]): "a person in space", str(files[2]): "from the sidecar"}
    assert media.find_captions(files, str(tmp_path / "caps.parquet"), "path", "prompt_en") == want
    assert media.find_captions(files, str(tmp_path / "saved"), "path", "prompt_en") == want
    assert media.find_captions(files, str(tmp_path / "caps.jsonl"), "file") == want  # caption column found by name

    out = tmp_path / "out"
    latents_cli(inputs, "-o", out, "--family", "flux", "--model", tiny_flux, "--preset", "256p",
                "--captions", tmp_path / "caps.parquet", "--file-column", "path", "--caption-column", "prompt_en")
    prompts = {}  # what the item files and AutoModel's metadata record as each file's prompt
    for shard in sorted(out.glob("metadata_shard_*.json")):
        for entry in json.loads(shard.read_text()):
            prompts[entry["image_path"]] = entry["prompt"]
    assert prompts == want
    bad = latents_cli(inputs, "-o", tmp_path / "bad", "--family", "flux", "--model", tiny_flux,
                      "--captions", tmp_path / "caps.parquet", "--caption-column", "prompt_en", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'caps.parquet'}: no column 'file_name' (columns: path, prompt_en, extra)"


def test_media_listing_passes_over_hidden_files_and_reads_a_file_once(tmp_path):
    """Dot-files (macOS ._ AppleDouble, .git/) are no media; a file reached through a symlinked
    folder, or named twice, is one item under its first path."""
    from prep.latents import media

    inputs = tmp_path / "in"
    (inputs / ".git").mkdir(parents=True)
    (inputs / "a.png").write_bytes((IMAGES / "coffee.png").read_bytes())
    (inputs / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (inputs / ".git" / "x.png").write_bytes((IMAGES / "coffee.png").read_bytes())
    (tmp_path / "link").symlink_to(inputs)
    assert media.list_media([str(inputs), str(tmp_path / "link"), str(inputs / "a.png")], video=False) == [inputs / "a.png"]


def test_captions_a_byte_order_mark_and_a_conflicting_duplicate(tmp_path):
    from prep.errors import BadRecord
    from prep.latents import media

    image = tmp_path / "d.png"
    image.write_bytes((IMAGES / "coffee.png").read_bytes())
    image.with_suffix(".txt").write_bytes("\ufeffa red cup\n".encode())  # as Notepad saves UTF-8
    assert media.find_captions([image]) == {str(image): "a red cup"}
    image.with_suffix(".txt").rename(image.with_suffix(".TXT"))  # as cameras and old Windows tools name them
    assert media.find_captions([image]) == {str(image): "a red cup"}
    image.with_suffix(".TXT").unlink()
    lines = ['{"file_name": "d.png", "text": "first"}', '{"file_name": "d.png", "text": "first"}']
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    assert media.find_captions([image]) == {str(image): "first"}  # the same caption twice is one caption
    (tmp_path / "captions.jsonl").write_text("\n".join(lines[:1] + ['{"file_name": "d.png", "text": "second"}']) + "\n")
    with pytest.raises(BadRecord, match=r"captions.jsonl:2: a second, different caption for 'd.png'"):
        media.find_captions([image])


def test_an_image_over_the_pixel_limit_is_undecodable_before_it_is_loaded(tmp_path, monkeypatch):
    from prep.latents import buckets, media

    table = buckets.bucket_table(256 * 256, 64)
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 100 * 100)  # a real 268 MP image is too heavy for CI
    Image.new("RGB", (101, 100)).save(tmp_path / "big.png")
    decoded = media.decode((0, str(tmp_path / "big.png"), False, table, None, False))
    assert decoded["error"] == "undecodable image (ValueError: 101x100 is over the 0 MP limit)"
    Image.new("RGB", (100, 100)).save(tmp_path / "ok.png")
    assert "error" not in media.decode((0, str(tmp_path / "ok.png"), False, table, None, False))


def test_an_audio_only_file_is_undecodable_for_want_of_a_video_stream(tmp_path):
    import av

    from prep.latents import buckets, media

    with av.open(str(tmp_path / "a.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoded = media.decode((0, str(tmp_path / "a.mp4"), True, buckets.bucket_table(256 * 256, 16), 5, True))
    assert decoded["error"] == "undecodable video (ValueError: no video stream)"


def test_relative_arguments_are_recorded_as_absolute_paths(tmp_path, tiny_flux, monkeypatch):
    captioned_copies(tmp_path / "in", [IMAGES / "coffee.png"])
    (tmp_path / "model").symlink_to(tiny_flux)
    monkeypatch.chdir(tmp_path)
    latents_cli("in", "-o", "out", "--family", "flux", "--model", "model", "--preset", "256p")
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["model_name"] == str(tmp_path / "model")
    config = json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]
    assert config["inputs"] == [str(tmp_path / "in")] and config["model"] == str(tmp_path / "model")
