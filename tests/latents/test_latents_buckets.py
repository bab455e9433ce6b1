"""Bucket table and nearest bucket against NeMo AutoModel's own MultiTierBucketCalculator."""

import itertools

import pytest

from helpers import prep
from loaders.formats.latents import PRESETS
from prep.latents.buckets import bucket_table, cover_crop, nearest_bucket

bucketing = pytest.importorskip("nemo_automodel.components.datasets.diffusion.multi_tier_bucketing")


@pytest.mark.parametrize("quantization", [16, 64])
@pytest.mark.parametrize("max_pixels", [*PRESETS.values(), 300_000, 640 * 360, 123_457])
def test_bucket_table_equals_automodel(max_pixels, quantization):
    theirs = bucketing.MultiTierBucketCalculator(quantization=quantization, max_pixels=max_pixels).get_all_buckets()
    ours = bucket_table(max_pixels, quantization)
    assert [(b.id, (b.width, b.height), b.aspect_ratio) for b in ours] == \
           [(b["id"], tuple(b["resolution"]), b["aspect_ratio"]) for b in theirs]
    assert all(b.width % quantization == 0 and b.height % quantization == 0 and b.width * b.height <= max_pixels for b in ours)


@pytest.mark.parametrize("preset,quantization", [("256p", 64), ("1024p", 64), ("512p", 16), ("768p", 16)])
def test_every_size_lands_in_automodels_bucket(preset, quantization):
    calc = bucketing.MultiTierBucketCalculator(quantization=quantization, max_pixels=PRESETS[preset])
    table = bucket_table(PRESETS[preset], quantization)
    sizes = list(range(1, 64)) + list(range(64, 4096, 37)) + [4096, 7680]
    for w, h in itertools.product(sizes, sizes):
        ours, theirs = nearest_bucket(table, w, h), calc.get_bucket_for_image(w, h)
        assert (ours.id, ours.width, ours.height) == (theirs["id"], *theirs["resolution"]), (w, h)


def test_cover_crop_covers_and_centres():
    for (w, h), (tw, th) in itertools.product([(1411, 1411), (1280, 720), (176, 144), (3, 1000), (999, 7)],
                                              [(1024, 1024), (768, 1344), (1408, 640)]):
        nw, nh, left, top = cover_crop(w, h, tw, th)
        assert nw >= tw and nh >= th and (nw == tw or nh == th or abs(nw / nh - w / h) < 0.01)
        assert left == (nw - tw) // 2 and top == (nh - th) // 2


def test_a_latent_cache_plots_its_bucket_occupancy(flux_cache, tmp_path):
    result = prep("inspect", flux_cache, "--plot", tmp_path / "buckets.png")
    assert f"plot {tmp_path / 'buckets.png'}: bucket occupancy" in result.stdout
    assert (tmp_path / "buckets.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
