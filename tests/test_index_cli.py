"""`prep index` builds the GPT dataset's caches ahead of time; the loader then only maps them."""

from conftest import TOKENIZERS, prep
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
    assert bad.returncode == 2 and "split" in bad.stderr and "Traceback" not in bad.stderr
