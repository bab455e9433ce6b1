"""Fixtures of the latents tests, each built once per test run: tiny real models saved with
save_pretrained (built from a config, random weights), real media from ../shared, and caches made
by the real CLI."""

from pathlib import Path

import pytest

from latent_helpers import IMAGES, VIDEO_FRAMES, VIDEO_PIXELS, VIDEOS, captioned_copies, latents_cli


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    from bench.latents import make_tiny_flux

    return make_tiny_flux(tmp_path_factory.mktemp("flux_model"))


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    from bench.latents import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("wan_model"))


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Every shared image (RGB, grayscale, RGBA, an animated GIF), captions in metadata.jsonl."""
    return captioned_copies(tmp_path_factory.mktemp("images"), sorted(IMAGES.iterdir()), style="jsonl")


@pytest.fixture(scope="session")
def flux_cache(tmp_path_factory, tiny_flux, image_dir) -> Path:
    out = tmp_path_factory.mktemp("flux_cache") / "cache"
    latents_cli(image_dir, "-o", out, "--family", "flux", "--model", tiny_flux, "--preset", "256p", "--batch-size", "4")
    return out


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """The shared videos with sidecar captions, plus a corrupt one."""
    folder = captioned_copies(tmp_path_factory.mktemp("videos"), sorted(VIDEOS.iterdir()))
    (folder / "broken.mp4").write_bytes((VIDEOS / "bikes.mp4").read_bytes()[:3000])
    (folder / "broken.txt").write_text("a broken file")
    return folder


@pytest.fixture(scope="session")
def wan_cache(tmp_path_factory, tiny_wan, video_dir) -> Path:
    out = tmp_path_factory.mktemp("wan_cache") / "cache"
    latents_cli(video_dir, "-o", out, "--family", "wan", "--model", tiny_wan, "--max-pixels", VIDEO_PIXELS,
                "--frames", VIDEO_FRAMES, "--skip-invalid")
    return out
