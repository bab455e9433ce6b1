"""loaders.latents: dataset over the manifest, bucket batch sampler, collate, resume state."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from loaders.latents import BucketBatchSampler, LatentDataset, collate_latents, scaled_batch_size
from loaders.manifest import ManifestError
from latent_helpers import *  # noqa: F401,F403


def test_dataset_reads_every_item_and_checks_the_fingerprint(flux_cache):
    ds = LatentDataset(flux_cache)
    manifest = json.loads((flux_cache / "manifest.json").read_text())
    assert len(ds) == manifest["stats"]["items"]
    item = ds[0]
    assert item["latent"].dtype == torch.float16 and tuple(item["bucket_resolution"].tolist()) == tuple(ds.entries[0]["bucket_resolution"])
    assert LatentDataset(flux_cache, fingerprint=manifest["fingerprint"])
    with pytest.raises(ManifestError):
        LatentDataset(flux_cache, fingerprint="0" * 32)


def test_batches_hold_one_bucket_cover_every_item_and_shuffle_per_epoch(flux_cache):
    ds = LatentDataset(flux_cache)
    sampler = BucketBatchSampler(ds, batch_size=2, seed=3)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(len(ds)))
    assert all(len({tuple(ds.resolutions[i]) for i in b}) == 1 for b in first)
    second = list(sampler)
    assert second != first and sorted(i for b in second for i in b) == list(range(len(ds)))
    assert BucketBatchSampler(ds, batch_size=2, seed=3).batches(0) == first


def test_ranks_get_equal_batch_counts_and_together_cover_the_data(flux_cache):
    ds = LatentDataset(flux_cache)
    per_rank = [BucketBatchSampler(ds, batch_size=2, rank=r, world_size=3, seed=1).batches(0) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    assert {i for batches in per_rank for b in batches for i in b} == set(range(len(ds)))
    for r in range(3):  # rank r's k-th batch and rank r+1's k-th batch come from the same bucket
        assert [tuple(ds.resolutions[b[0]]) for b in per_rank[r]] == [tuple(ds.resolutions[b[0]]) for b in per_rank[0]]


def test_state_dict_resumes_with_the_next_batch(flux_cache):
    ds = LatentDataset(flux_cache)
    sampler = BucketBatchSampler(ds, batch_size=1, seed=7)
    it = iter(sampler)
    taken = [next(it) for _ in range(3)]
    state = sampler.state_dict()
    resumed = BucketBatchSampler(ds, batch_size=1, seed=0)
    resumed.load_state_dict(state)
    assert taken + list(resumed) == sampler.batches(0)


def test_batch_size_scaled_by_resolution():
    assert scaled_batch_size((512, 512), 32, (512, 512)) == 32
    assert scaled_batch_size((1024, 1024), 32, (512, 512)) == 8
    assert scaled_batch_size((4096, 4096), 2, (512, 512)) == 1


def test_collate_gives_automodel_batch_keys(flux_cache, wan_cache):
    for cache, key in [(flux_cache, "image_latents"), (wan_cache, "video_latents")]:
        ds = LatentDataset(cache)
        loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds, batch_size=2), collate_fn=collate_latents)
        for batch in loader:
            assert batch[key].shape[0] == batch["text_embeddings"].shape[0] == len(batch["index"])
            assert batch[key].ndim == (5 if key == "video_latents" else 4)
        if key == "image_latents":
            assert {"pooled_prompt_embeds", "clip_hidden", "crop_offset"} <= set(batch)
        else:
            assert batch["text_embeddings"].shape[1:] == (226, 32) and "first_frame" in batch
