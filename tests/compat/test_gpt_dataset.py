"""loaders.gpt against Megatron-Core 0.16.1's own GPTDataset and BlendedDataset, on data that
`prep tokenize` made: the same indices and the same samples, in the same order."""

import itertools
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from helpers import ROOT, TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders import gpt, gpt_sources, index_cache
from loaders.manifest import dataset_prefixes, load

EOD = 50256  # gpt2
SPLIT = "90,8,2"
NAMES = ("document_index", "sample_index", "shuffle_index")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two outputs of the real CLI: one shard of the example JSONL, three shards of Botchan."""
    root = tmp_path_factory.mktemp("gpt")
    tok = TOKENIZERS / "gpt2"
    corpus = write_jsonl(root / "b.jsonl", botchan_documents(600, seed=5))
    runs = [(ROOT / "examples" / "sample.jsonl", "-o", root / "a", "--tokenizer", tok),
            (corpus, "-o", root / "b", "--tokenizer", tok, "--shard-size", "100k")]
    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(prep, "tokenize", *args) for args in runs]
        import megatron.core.datasets.gpt_dataset  # noqa: F401  (its slow import overlaps the CLI runs)
        for run in done:
            run.result()
    assert len(load(root / "b")["datasets"]["text"]["shards"]) == 3
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def megatron(tmp_path_factory):
    """build(prefixes, weights, sizes, ...) -> Megatron-Core's [train, valid, test] datasets."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class Tokenizer:  # all that the datasets ask of a tokenizer; no `pad`, so Megatron pads with -1
        eod = EOD
        vocab_size = 50257
        unique_identifiers = {"class": "gpt2"}

    root = tmp_path_factory.mktemp("megatron")
    # BlendedDataset asks torch.distributed for the rank when it caches: a group of one.
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=0, world_size=1)
    caches = itertools.count()

    class PaddingTokenizer(Tokenizer):
        pad = EOD  # a pad id that is another special token's: Megatron pads with -1 instead

    def build(prefixes, weights, sizes, seq_length, seed, split=SPLIT, pad_is_eod=False, **flags):
        flags = {"reset_position_ids": False, "reset_attention_mask": False, "eod_mask_loss": False, **flags}
        # A fresh cache per build: Megatron's cache key leaves out options such as add_extra_token_to_sequence.
        config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights), split=split,
                                  tokenizer=PaddingTokenizer() if pad_is_eod else Tokenizer(),
                                  path_to_cache=str(root / f"cache{next(caches)}"), **flags)
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()

    yield build
    torch.distributed.destroy_process_group()


def assert_same(ours: gpt.GPTDataset, theirs, samples=None):
    """Equal indices and lengths, and equal samples (all, or those given), key by key."""
    assert len(ours) == len(theirs)
    mids = theirs.datasets if ours.blended else [theirs]
    if ours.blended:
        assert_arrays(ours.dataset_index, theirs.dataset_index)
        assert_arrays(ours.dataset_sample_index, theirs.dataset_sample_index)
    assert len(ours.sources) == len(mids)
    for source, mid in zip(ours.sources, mids):
        for name in NAMES:
            assert_arrays(getattr(source, name), getattr(mid, name))
    for i in range(len(ours)) if samples is None else samples:
        a, b = ours[i], theirs[i]
        assert list(a) == list(b)
        for key in a:  # numpy compares faster than torch.equal on a busy machine
            expected = torch.as_tensor(b[key])
            assert a[key].dtype == expected.dtype and np.array_equal(a[key].numpy(), expected.numpy()), (i, key)


def assert_arrays(ours, theirs):
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def blend_of(a, b, weights):
    """The Megatron blend for manifests a and b: b's weight shared among its shards by tokens."""
    shards = load(b)["datasets"]["text"]["shards"]
    total = sum(s["tokens"] for s in shards)
    return dataset_prefixes(load(a)) + dataset_prefixes(load(b)), [weights[0]] + [weights[1] * (s["tokens"] / total) for s in shards]


@pytest.mark.parametrize("seq_length", [64, 256])
@pytest.mark.parametrize("seed", [1234, 7, 2024])
@pytest.mark.parametrize("blended", [False, True], ids=["single", "blended"])
def test_train_and_valid_samples_equal_megatron(corpora, megatron, blended, seed, seq_length):
    # valid asks for several epochs, so the separate final epoch is in play (train too at 256)
    a, b = corpora
    sizes = [2000, 1100, 0]
    if blended:
        theirs = megatron(*blend_of(a, b, [0.3, 0.7]), sizes, seq_length, seed)
        ours = gpt.GPTDataset.from_manifests([a, b], weights=[0.3, 0.7], seq_length=seq_length, seed=seed,
                                             split=SPLIT, num_samples=sizes).splits()
    else:
        theirs = megatron(dataset_prefixes(load(a)), None, sizes, seq_length, seed)
        ours = gpt.GPTDataset(a, seq_length=seq_length, seed=seed, split=SPLIT, num_samples=sizes).splits()
    for split in (0, 1):
        assert ours[split].blended == blended
        assert_same(ours[split], theirs[split])


@pytest.mark.parametrize("flags", [
    dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True,
         add_extra_token_to_sequence=False, drop_last_partial_validation_sequence=False),
    dict(create_attention_mask=False, reset_position_ids=True),
], ids=["resets-no-extra-token-keep-partial", "no-attention-mask"])
def test_sample_options_equal_megatron(corpora, megatron, flags):
    a, _ = corpora
    sizes = [300, None, None]  # None: one epoch, whose last partial sequence is kept and padded
    theirs = megatron(dataset_prefixes(load(a)), None, sizes, 64, 3, "80,20", **flags)
    ours = gpt.GPTDataset(a, seq_length=64, seed=3, split="80,20", num_samples=sizes, **flags).splits()
    assert ours[2] is None and theirs[2] is None
    valid = ours[1].sources[0]
    last = int(np.flatnonzero(np.asarray(valid.shuffle_index) == len(valid) - 1)[0])
    assert (valid.text(last) == -1).any() == (not flags.get("drop_last_partial_validation_sequence", True))
    for split in (0, 1):  # Megatron's loop over EODs is slow: every 17th sample, and the last one
        assert_same(ours[split], theirs[split], [*range(0, len(ours[split]), 17), last])


def test_weightless_blend_equals_megatron(corpora, megatron):
    # train: blended by dataset lengths up to num_samples; valid: every sample once (exhaustive)
    a, b = corpora
    prefixes = dataset_prefixes(load(a)) + dataset_prefixes(load(b))
    theirs = megatron(prefixes, None, [500, None, None], 64, 11, "80,20")
    for split in (0, 1):
        ours = gpt.GPTDataset([a, b], seq_length=64, seed=11, split="80,20", num_samples=[500, None, None],
                              split_index=split)
        assert len(ours.sources) == 4
        assert_same(ours, theirs[split])


def test_blend_of_one_dataset_twice_equals_megatron_on_a_fresh_cache(corpora, megatron, tmp_path):
    """--data-path 0.5 A 0.5 A: both sources build the same index cache at once, on two threads;
    neither may trip over the other's files."""
    a, _ = corpora
    prefixes = dataset_prefixes(load(a)) * 2
    sizes = [200_000, 0, 0]  # Megatron asks a size of every split of a weighted blend
    theirs = megatron(prefixes, [0.5, 0.5], sizes, 16, 3, "1,0,0")[0]
    for attempt in range(4):
        ours = gpt.GPTDataset([a, a], [0.5, 0.5], seq_length=16, seed=3, split="1,0,0", num_samples=sizes,
                              cache_dir=tmp_path / str(attempt))
        assert_same(ours, theirs, samples=[*range(0, len(ours), 997), len(ours) - 1])
        assert not list((tmp_path / str(attempt)).glob("*.tmp"))


def test_index_functions_equal_megatron_helpers():
    from megatron.core.datasets import helpers
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    rng = np.random.default_rng(0)
    for _ in range(200):  # sample index: empty sequences, both token conventions, partial last sample
        lengths = rng.integers(0, 50, int(rng.integers(1, 60))).astype(np.int32)
        lengths[0] += 2
        seq_length, extra, drop_last, epochs = int(rng.integers(2, 40)), int(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(1, 4))
        documents = np.tile(np.arange(len(lengths), dtype=np.int32), epochs)
        rng.shuffle(documents)
        expected = helpers.build_sample_idx(lengths, documents, seq_length, epochs, int(lengths.sum()), drop_last, extra)
        assert_arrays(gpt.sample_index(lengths, documents, seq_length, epochs, int(lengths.sum()), drop_last, extra), expected)

    for weights in ([0.3, 0.7], [0.5, 0.5], [1 / 3] * 3, rng.random(7), rng.random(12) ** 4):
        weights = gpt.normalize(weights)
        size = 200_000
        index, sample = np.zeros(size, np.int16), np.zeros(size, np.int64)
        helpers.build_blending_indices(index, sample, np.asarray(weights), len(weights), size, False)
        ours = gpt.blending_indices(weights, size)
        assert_arrays(ours[0], index)
        assert_arrays(ours[1], sample)

    for sizes in ([100, 200], [1000, 7, 300], rng.integers(1, 5000, 20)):
        total = int(np.sum(sizes))
        index, sample = np.zeros(total, np.int16), np.zeros(total, np.int64)
        helpers.build_exhaustive_blending_indices(index, sample, np.asarray(sizes, np.int64), len(sizes))
        ours = gpt.exhaustive_blending_indices(sizes)
        assert_arrays(ours[0], index)
        assert_arrays(ours[1], sample)

    for split in ["99,1,0", "969, 30, 1", "1", "0.5,0.5", "80,20", "1,1,1", "33.3,33.3,33.4"]:
        vector = parse_and_normalize_split(split)
        assert gpt.parse_split(split) == vector
        assert gpt.split_matrix(vector) == convert_split_vector_to_split_matrix(vector)


def test_index_cache_is_reused_only_for_the_same_inputs(corpora, tmp_path, monkeypatch):
    a, b = corpora
    builds = []
    build = gpt.gpt_indices
    monkeypatch.setattr(gpt_sources, "gpt_indices", lambda *args: builds.append(args) or build(*args))
    prefix = tmp_path / "data" / "p"
    prefix.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(str(a / "text_document") + suffix, str(prefix) + suffix)
    base = dict(seq_length=64, seed=5, split="90,10", num_samples=400, eod_id=EOD)

    first = gpt.GPTDataset(prefix, **base)
    assert len(builds) == 1 and not first.sources[0].shuffle_index.flags.writeable  # memory-mapped read-only
    assert {p.name.split("-")[1] for p in (tmp_path / "data" / "cache").iterdir()} == {first.key}
    again = gpt.GPTDataset(prefix, **base)
    assert len(builds) == 1 and again.key == first.key
    assert_arrays(again.sources[0].shuffle_index, first.sources[0].shuffle_index)

    others = [dict(seed=6), dict(num_samples=401), dict(seq_length=65), dict(split="80,20"),
              dict(add_extra_token_to_sequence=False), dict(split_index=1)]
    keys = {first.key}
    for change in others:
        keys.add(gpt.GPTDataset(prefix, **{**base, **change}).key)
    assert len(builds) == 1 + len(others) == len(keys)

    for suffix in (".bin", ".idx"):  # other data under the same name
        shutil.copy(str(dataset_prefixes(load(b))[0]) + suffix, str(prefix) + suffix)
    assert gpt.GPTDataset(prefix, **base).key not in keys
    assert len(builds) == 2 + len(others)

    manifest_shard = load(b)["datasets"]["text"]["shards"][0]
    assert gpt.resolve(b)[0][0].checksum == manifest_shard["idx"]["xxh3_128"] + manifest_shard["bin"]["xxh3_128"]


def test_ranks_other_than_0_wait_for_the_cache(corpora, tmp_path, monkeypatch):
    a, _ = corpora
    monkeypatch.setattr(index_cache, "_rank", lambda: 1)
    monkeypatch.setattr(index_cache, "CACHE_WAIT_S", 0.5)
    with pytest.raises(TimeoutError, match="rank 0"):
        gpt.GPTDataset(a, seq_length=64, num_samples=100, cache_dir=tmp_path)
    monkeypatch.setattr(index_cache, "_rank", lambda: 0)
    built = gpt.GPTDataset(a, seq_length=64, num_samples=100, cache_dir=tmp_path)
    monkeypatch.setattr(index_cache, "_rank", lambda: 1)
    assert gpt.GPTDataset(a, seq_length=64, num_samples=100, cache_dir=tmp_path).key == built.key


def test_resume_from_state_dict_gives_the_same_following_batches(corpora, tmp_path):
    def dataset():
        return gpt.GPTDataset.from_manifests(corpora, weights=[0.3, 0.7], seq_length=64, split="99,1,0",
                                             num_samples=600, seed=9, cache_dir=tmp_path)

    ds = dataset()
    batches = iter(ds.dataloader(batch_size=4, rank=1, world_size=2, num_workers=2))
    for _ in range(5):
        next(batches)
    state = ds.state_dict()
    assert state["consumed_samples"] == 5 * 4 * 2
    expected = [next(batches) for _ in range(4)]

    resumed = dataset()
    resumed.load_state_dict(state)
    got = list(zip(range(4), resumed.dataloader(batch_size=4, rank=1, world_size=2, num_workers=2)))
    for (_, batch), want in zip(got, expected, strict=True):
        assert list(batch) == list(want) and all(torch.equal(batch[k], want[k]) for k in batch)
    with pytest.raises(ValueError, match="other data or options"):
        gpt.GPTDataset(corpora[0], seq_length=64, num_samples=600, cache_dir=tmp_path).load_state_dict(state)


def test_rank_shards_are_disjoint_and_cover_every_full_global_batch(corpora, tmp_path):
    ds = gpt.GPTDataset.from_manifests(corpora, weights=[0.5, 0.5], seq_length=32, split="99,1,0",
                                       num_samples=1000, cache_dir=tmp_path)
    loaders = [ds.dataloader(batch_size=4, rank=r, world_size=3, num_workers=0) for r in range(3)]
    shards = [[i for batch in loader.indices() for i in batch] for loader in loaders]
    seen = sorted(i for shard in shards for i in shard)
    assert seen == list(range(len(ds) // 12 * 12)) and len(ds) - len(seen) < 12
    assert all(len(shard) == len(shards[0]) for shard in shards)
    for batch, indices in zip(loaders[2], loaders[2].indices()):  # the batches hold those samples
        assert torch.equal(batch["tokens"], torch.stack([ds[i]["tokens"] for i in indices]))
        assert torch.equal(batch["dataset_id"], torch.stack([ds[i]["dataset_id"] for i in indices]))


@pytest.mark.parametrize("flags", [
    {},
    dict(create_attention_mask=False),
    dict(add_extra_token_to_sequence=False, drop_last_partial_validation_sequence=False),
    dict(drop_last_partial_validation_sequence=False, pad_id=198),  # a pad id that real text holds too
    dict(eod_mask_loss=True, reset_position_ids=True),  # per-sample masks: collated in the worker
], ids=["default", "no-attention-mask", "no-extra-token-padded", "pad-is-a-real-token", "per-sample-masks"])
@pytest.mark.parametrize("blended", [False, True], ids=["single", "blended"])
def test_batches_equal_collated_samples(corpora, tmp_path, flags, blended):
    """The loader's batches (workers send token windows, the batch is finished in the main
    process) equal torch's default_collate of the dataset's own samples, key by key."""
    paths, weights = (corpora, [0.4, 0.6]) if blended else (corpora[0], None)
    ds = gpt.GPTDataset(paths, weights, seq_length=48, split="90,10", num_samples=[200, 64, None], split_index=1,
                        cache_dir=tmp_path, seed=5, **flags)
    pad = ds.pad_id
    loader = ds.dataloader(batch_size=8, num_workers=2)
    padded_seen = 0
    for batch, indices in zip(loader, loader.indices(), strict=True):
        want = torch.utils.data.default_collate([ds[i] for i in indices])
        assert list(batch) == list(want)
        for key in want:
            assert batch[key].dtype == want[key].dtype and torch.equal(batch[key], want[key]), key
        padded_seen += sum(bool((ds.sources[0].text(i) == pad).any()) for i in indices if not blended)
    if not blended and not flags.get("drop_last_partial_validation_sequence", True):
        assert padded_seen  # the padded last sample was among them


@pytest.mark.parametrize("flags", [{}, dict(add_extra_token_to_sequence=False, drop_last_partial_validation_sequence=False)],
                         ids=["default", "no-extra-token-padded"])
def test_finish_on_tensors_equals_finish_on_numpy(corpora, tmp_path, flags):
    """The device path (tensors, as on CUDA) and the CPU path (numpy) make the same batch."""
    ds = gpt.GPTDataset(corpora, seq_length=40, split="90,10", num_samples=[100, None, None], split_index=1,
                        cache_dir=tmp_path, **flags)  # valid: one epoch of each source, blended
    assert ds.blended
    arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in ds.batch_shapes(len(ds)).items()}
    ds.fill_batch(range(len(ds)), arrays)
    assert arrays["padded"].any() == (not flags.get("drop_last_partial_validation_sequence", True))
    on_cpu = ds.finish(arrays)
    as_tensors = ds.finish({name: torch.from_numpy(array) for name, array in arrays.items()})
    assert list(on_cpu) == list(as_tensors)
    for key in on_cpu:
        assert on_cpu[key].dtype == as_tensors[key].dtype and torch.equal(on_cpu[key], as_tensors[key]), key


def megatron_per_split(blends, sizes, seq_length, seed, cache):
    """Megatron-Core's [train, valid, test] datasets for blend_per_split `blends`."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class Tokenizer:
        eod, vocab_size, unique_identifiers = EOD, 50257, {"class": "gpt2"}

    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend_per_split=blends, tokenizer=Tokenizer(),
                              path_to_cache=str(cache), reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False)
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


def test_blend_per_split_equals_megatrons(corpora, megatron, tmp_path):
    """Megatron's blend_per_split: each split its own blend of whole datasets."""
    a, b = corpora
    (pa,), pb = dataset_prefixes(load(a)), dataset_prefixes(load(b))
    blends = [([pa, pb[0], pb[1]], [0.6, 0.3, 0.1]), ([pb[2]], None), ([pa, pb[2]], [0.5, 0.5])]
    sizes = [700, None, 90]
    theirs = megatron_per_split(blends, sizes, 96, 7, tmp_path / "megatron")
    ours = gpt.GPTDataset.per_split([blends[0], blends[1][0], blends[2]], seq_length=96, num_samples=sizes, seed=7, eod_id=EOD,
                                    cache_dir=tmp_path / "ours")
    for mine, reference in zip(ours, theirs):
        assert_same(mine, reference, samples=range(0, len(mine), 7))


def test_per_split_blend_of_one_weighted_prefix_is_megatrons_plain_dataset(corpora, megatron, tmp_path):
    """blend_per_split ignores a lone prefix's weight: a plain GPTDataset of num_samples (no
    surplus, no BlendedDataset), where the weighted `blend` of one prefix is a BlendedDataset."""
    from megatron.core.datasets.blended_dataset import BlendedDataset

    a, b = corpora
    (pa,), pb = dataset_prefixes(load(a)), dataset_prefixes(load(b))
    blends = [([pa], [1.0]), ([pb[1]], [0.4]), ([pa, pb[2]], [0.5, 0.5])]
    sizes = [3250, 100, 90]
    theirs = megatron_per_split(blends, sizes, 64, 5, tmp_path / "megatron")
    assert [type(t) is BlendedDataset for t in theirs] == [False, False, True]
    ours = gpt.GPTDataset.per_split(blends, seq_length=64, num_samples=sizes, seed=5, eod_id=EOD, cache_dir=tmp_path / "ours")
    assert [d.blended for d in ours] == [False, False, True]
    for mine, reference in zip(ours, theirs):
        assert_same(mine, reference, samples=range(0, len(mine), 5))
    with pytest.raises(ValueError, match="need num_samples"):  # Megatron asserts the same
        gpt.GPTDataset.per_split([blends[0], None, None], seq_length=64, num_samples=[None, None, None], eod_id=EOD,
                                 cache_dir=tmp_path / "ours")


def test_blend_of_one_weighted_prefix_equals_megatrons_blend_of_one(corpora, megatron, tmp_path):
    """Megatron's `blend` (not per split) with one prefix and a weight: a BlendedDataset over a
    mid-level dataset with the surplus, in every split."""
    from megatron.core.datasets.blended_dataset import BlendedDataset

    a, _ = corpora
    sizes = [3250, 100, 10]
    theirs = megatron(dataset_prefixes(load(a)), [1.0], sizes, 64, 5)
    ours = gpt.GPTDataset(a, [1.0], seq_length=64, seed=5, split=SPLIT, num_samples=sizes, cache_dir=tmp_path).splits()
    for mine, reference in zip(ours, theirs):
        assert type(reference) is BlendedDataset and mine.blended
        assert_same(mine, reference, samples=range(0, len(mine), 5))


def test_a_given_pad_id_equal_to_eod_is_ignored_as_megatron_ignores_it(corpora, megatron):
    """Megatron resets a pad id that collides with another special token to -1 (EODs keep their
    loss); a pad_id passed to GPTDataset follows the same rule."""
    a, _ = corpora
    sizes = [400, None, None]
    theirs = megatron(dataset_prefixes(load(a)), None, sizes, 64, 5, "1,0,0", pad_is_eod=True)[0]
    ours = gpt.GPTDataset(a, seq_length=64, seed=5, split="1,0,0", num_samples=sizes, pad_id=EOD)
    assert ours.pad_id == theirs._pad_token_id == -1
    assert_same(ours, theirs, range(0, 400, 7))


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches(corpora, tmp_path):
    """dataloader(device="cuda") (pinned staging, non-blocking copies on a side stream) hands out
    the CPU loader's batches, on the GPU, in the same order; skipped where no GPU is visible."""
    ds = gpt.GPTDataset(corpora, [0.4, 0.6], seq_length=48, split="90,10", num_samples=[200, 64, None],
                        cache_dir=tmp_path, seed=5, reset_position_ids=True, eod_mask_loss=True)
    cpu = list(ds.dataloader(batch_size=8, num_workers=2))
    ds.load_state_dict({**ds.state_dict(), "consumed_samples": 0})
    cuda = list(ds.dataloader(batch_size=8, num_workers=2, device="cuda"))
    assert len(cuda) == len(cpu) > 0
    for got, want in zip(cuda, cpu):
        assert list(got) == list(want)
        for key in want:
            assert got[key].device.type == "cuda" and torch.equal(got[key].cpu(), want[key]), key
