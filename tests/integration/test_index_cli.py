"""`prep index` builds the GPT dataset's caches ahead of time; the loader then only maps them."""

from helpers import TOKENIZERS, prep
from loaders.gpt import GPTDataset


def test_prep_index_writes_the_caches_the_loader_uses(tmp_path):
    out = tmp_path / "out"
    prep("tokenize", "examples/sample.jsonl", "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    result = prep("index", out, "--seq-length", "128", "--num-samples", "3000,100", "--split", "90,10,0")
    assert "train" in result.stdout and "valid" in result.stdout
    caches = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    assert len(caches) >= 6  # document, sample and shuffle indices of two splits
    train, valid, _ = GPTDataset.from_manifests([out], seq_length=128, num_samples=[3000, 100], split="90,10,0").splits()
    assert len(train) >= 3000 and len(valid) >= 100 and train[0]["tokens"].shape == (128,)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == caches  # nothing rebuilt
    bad = prep("index", out, "--seq-length", "128", "--split", "969,30,1", check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "leaves the test split no sequences" in bad.stderr and "are too few for that share" in bad.stderr
    blend = prep("index", out, out, "--seq-length", "4096", "--split", "99,1,0", "--num-samples", "1000,,")  # valid: none
    assert blend.stderr == "" and "--num-samples is not used" in blend.stdout  # as Megatron: no weights, whole epochs


def test_prep_index_takes_one_epoch_entries_and_the_sample_options(tmp_path):
    out = tmp_path / "out"
    prep("tokenize", "examples/sample.jsonl", "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    prep("index", out, "--seq-length", "64", "--num-samples", "5000,,", "--split", "80,20,0", "--no-extra-token",
         "--keep-partial-validation-sequence")
    caches = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    options = dict(seq_length=64, split="80,20,0", add_extra_token_to_sequence=False, drop_last_partial_validation_sequence=False)
    train, valid, _ = GPTDataset.from_manifests([out], num_samples=[5000, None, None], **options).splits()
    assert len(train) >= 5000 and train[0]["tokens"].shape == (64,)
    assert valid[len(valid) - 1]["loss_mask"].sum() < 64  # the partial last validation sample is kept, padded
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == caches  # nothing rebuilt
    for value in ("1,2,3,4", "x", "-5"):
        bad = prep("index", out, "--seq-length", "64", "--num-samples", value, check=False)
        assert bad.returncode == 2 and "--num-samples" in bad.stderr and "Traceback" not in bad.stderr
