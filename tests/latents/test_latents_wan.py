"""Videos -> Wan 2.1 caches with tiny real AutoencoderKLWan + UMT5; AutoModel reads them."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from prep.latents import media
from prep.latents.buckets import bucket_table
from latent_helpers import *  # noqa: F401,F403
from latent_helpers import VIDEO_FRAMES, VIDEO_PIXELS, VIDEOS, captioned_copies, latents_cli


def _items(out):
    meta = json.loads((out / "metadata.json").read_text())
    return [e for shard in meta["shards"] for e in json.loads((out / shard).read_text())]


def test_wan_cache_fields_shapes_and_failures_recorded(wan_cache, video_dir):
    items = _items(wan_cache)
    assert sorted(e["video_path"] for e in items) == sorted(str(p) for p in video_dir.glob("*.mp4") if p.name != "broken.mp4")
    for entry in items:
        w, h = entry["bucket_resolution"]
        assert w % 16 == 0 and h % 16 == 0 and w * h <= VIDEO_PIXELS and entry["cache_file"].endswith(".meta")
        data = torch.load(entry["cache_file"], weights_only=True)
        assert entry["num_frames"] == VIDEO_FRAMES == data["num_frames"]
        assert data["video_latents"].dtype == torch.float16
        assert data["video_latents"].shape == (1, 16, (VIDEO_FRAMES - 1) // 4 + 1, h // 8, w // 8)
        assert data["text_embeddings"].shape == (1, 226, 32) and data["text_embeddings"].dtype == torch.bfloat16
        assert (data["text_embeddings"][0, 20:] == 0).all() and (data["text_embeddings"][0, 0] != 0).any()  # zero-padded to 226
        assert data["first_frame"].dtype == torch.uint8 and data["first_frame"].shape == (h, w, 3)
        assert data["model_version"] == "wan2.1" and data["deterministic_latents"] is True
    manifest = json.loads((wan_cache / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"undecodable video": 1}
    assert "broken.mp4" in manifest["stats"]["skipped_examples"][0]


def test_automodel_video_dataloader_reads_our_cache(wan_cache):
    collate = pytest.importorskip("nemo_automodel.components.datasets.diffusion.collate_fns")
    loader, _ = collate.build_video_multiresolution_dataloader(cache_dir=str(wan_cache), batch_size=1, num_workers=0,
                                                               drop_last=False, pin_memory=False)
    batches = list(loader)
    assert len(batches) == len(_items(wan_cache))
    for batch in batches:
        assert batch["video_latents"].ndim == 5 and batch["text_embeddings"].shape == (1, 226, 32)


def test_wan_latents_are_normalised_posterior_means(wan_cache, tiny_wan):
    """Independent computation for one video: PyAV frames at np.linspace indices, cover-crop,
    diffusers' AutoencoderKLWan posterior mean, (mean - latents_mean) / latents_std."""
    from diffusers import AutoencoderKLWan
    from PIL import Image

    entry = next(e for e in _items(wan_cache) if e["video_path"].endswith("carphone_pristine.mp4"))
    with av.open(entry["video_path"]) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    indices = np.linspace(0, len(frames) - 1, VIDEO_FRAMES).astype(int)
    w, h = entry["bucket_resolution"]
    ow, oh = entry["original_resolution"]
    scale = max(w / ow, h / oh)
    nw, nh = max(w, int(ow * scale)), max(h, int(oh * scale))
    left, top = (nw - w) // 2, (nh - h) // 2
    clip = np.stack([np.asarray(Image.fromarray(frames[i]).resize((nw, nh), Image.BILINEAR))[top:top + h, left:left + w] for i in indices])
    x = torch.from_numpy(clip).float().div(255).sub(0.5).div(0.5).permute(3, 0, 1, 2)[None]
    vae = AutoencoderKLWan.from_pretrained(tiny_wan / "vae").eval()
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
    lm = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    ls = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    data = torch.load(entry["cache_file"], weights_only=True)
    torch.testing.assert_close(data["video_latents"], ((mean - lm) / ls).half(), atol=2e-3, rtol=2e-3)
    assert (data["first_frame"].numpy() == clip[0]).all()


def test_frame_sampling_is_automodels_linspace_forced_to_4n_plus_1():
    assert media.frame_count_for(33, True) == 33 and media.frame_count_for(32, True) == 29
    assert media.frame_count_for(32, False) == 32 and media.frame_count_for(1, True) == 1
    for total, n in [(132, 33), (250, 81), (120, 9), (17, 17), (5, 9), (1, 9)]:  # shorter videos repeat frames
        assert media.sample_indices(total, n).tolist() == np.linspace(0, total - 1, n).astype(int).tolist()


def _write_video(path, size, pts, rotation=0):
    """A synthetic video: frame k is a horizontal gradient with its index in the first pixel."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for k, t in enumerate(pts):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[:, : size[0] // 2] = 255  # left half white
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_rotated_and_variable_frame_rate_videos(tmp_path):
    table = bucket_table(VIDEO_PIXELS, 16)
    rotated = tmp_path / "rotated.mp4"
    _write_video(rotated, (128, 64), [40 * k for k in range(12)], rotation=90)
    item = media.decode_video(str(rotated), table, 9, True)
    assert item["original"] == (64, 128)  # displayed portrait
    w, h = table[item["bucket"]].width, table[item["bucket"]].height
    assert h > w and item["pixels"].shape == (9, h, w, 3)
    # 90 degrees counter-clockwise: the white left half ends up at the bottom
    assert item["pixels"][0, -2, w // 2].mean() > 200 and item["pixels"][0, 1, w // 2].mean() < 50
    vfr = tmp_path / "vfr.mp4"
    pts = np.cumsum([0, 10, 90, 10, 200, 33, 33, 500, 10, 10, 10, 40, 40]).tolist()
    _write_video(vfr, (96, 96), pts)
    item = media.decode_video(str(vfr), table, 33, True)
    assert item["total_frames"] == len(pts) and item["frames"] == 33  # shorter than asked: frames repeat
    assert item["frame_indices"] == np.linspace(0, 12, 33).astype(int).tolist() and set(item["frame_indices"]) == set(range(13))
    assert item["pixels"].shape[0] == 33


def test_undecodable_video_stops_with_one_line_error(tmp_path, tiny_wan):
    inputs = captioned_copies(tmp_path / "in", [VIDEOS / "carphone_distorted.mp4"])
    (inputs / "zz_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    (inputs / "zz_broken.txt").write_text("broken")
    result = latents_cli(inputs, "-o", tmp_path / "out", "--family", "wan", "--model", tiny_wan, "--max-pixels", VIDEO_PIXELS,
                         "--frames", 5, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {inputs / 'zz_broken.mp4'}: undecodable video") and "--skip-invalid" in last
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_cut_video_is_undecodable_not_padded_with_repeated_frames(tmp_path):
    """A download cut in half (moov first, so it opens): 40 frames in its header, 17 decode. It is
    a bad item, where repeating the 17 to fill --frames would make a slowed-down clip."""
    import av

    from prep.latents import buckets, media

    rng = np.random.default_rng(0)
    with av.open(str(tmp_path / "full.mp4"), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(40):
            frame = av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    table = buckets.bucket_table(256 * 256, 16)
    assert "error" not in media.decode((0, str(tmp_path / "full.mp4"), True, table, 33, True))
    error = media.decode((0, str(tmp_path / "cut.mp4"), True, table, 33, True))["error"]
    assert error.startswith("undecodable video (ValueError: truncated") or error.startswith("undecodable video (ValueError: damaged")
