"""Benchmark loaders.gpt against Megatron-Core 0.16.1 (with its compiled helpers), in one run.

    python bench/loaders.py [--samples 10000000] [--seq-length 2048] [--workers 2] [--data DIR]

Prints, each with the ratio ours / Megatron (of throughput; of speed for times):
  index build   the train indices of a 0.3/0.7 blend for --samples samples, cold (no cache), on
                two synthetic datasets (real .idx of log-normal document lengths, sparse .bin);
                then the blending and sample index steps alone
  __getitem__   random access into a 0.3/0.7 blend of real text tokenized by `prep tokenize`
  DataLoader    samples/s with --workers workers, batch 8, CPU, with and without attention masks
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/, whose tokenize.py would shadow the standard library's

import argparse
import json
import os
import shutil
import subprocess
import time
import warnings

import numpy as np
import torch

sys.path.insert(1, str(ROOT / "tests"))

from loaders import gpt
from loaders.formats.indexed import encode_index
from loaders.manifest import SCHEMA

SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared"))
EOD = 50256


class Tokenizer:  # what Megatron's datasets ask of a tokenizer
    eod = EOD
    vocab_size = 50257
    unique_identifiers = {"class": "bench"}


def synthetic(folder: Path, name: str, documents: int, seed: int) -> Path:
    """A prep-style output of one shard: real .idx, sparse .bin, a minimal manifest."""
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    lengths = np.random.default_rng(seed).lognormal(6.5, 1.0, documents).astype(np.int32) + 1
    with open(out / "p.idx", "wb") as f:
        f.writelines(encode_index(np.uint16, lengths, np.arange(documents + 1)))
    with open(out / "p.bin", "wb") as f:
        f.truncate(int(lengths.sum()) * 2)
    shard = {"prefix": "p", "tokens": int(lengths.sum()), "idx": {"xxh3_128": f"idx{seed}"}, "bin": {"xxh3_128": f"bin{seed}"}}
    manifest = {"schema": SCHEMA, "fingerprint": "bench", "tokenizer": {"eod_id": EOD, "special_ids": {"eod": EOD}},
                "datasets": {"text": {"shards": [shard]}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def tokenized(folder: Path) -> list[Path]:
    """The example JSONL and Botchan, tokenized with GPT-2 by the real CLI."""
    from conftest import botchan_documents, write_jsonl

    corpus = write_jsonl(folder / "botchan.jsonl", botchan_documents(3000, seed=1))
    outs = []
    for name, source in (("a", ROOT / "examples" / "sample.jsonl"), ("b", corpus)):
        if not (folder / name / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", str(source), "-o", str(folder / name), "--overwrite",
                            "--tokenizer", str(SHARED / "data" / "tokenizers" / "gpt2")], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        outs.append(folder / name)
    return outs


def megatron_blend(outs, weights, samples, seq_length, cache, **flags):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(random_seed=1234, sequence_length=seq_length, split="99,1,0", tokenizer=Tokenizer(),
                              blend=([str(o / "p") if (o / "p.idx").exists() else str(o / "text_document") for o in outs], weights),
                              path_to_cache=str(cache), reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False, **flags)
    return BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()[0]


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def index_build(folder: Path, samples: int, seq_length: int) -> None:
    from megatron.core.datasets import helpers

    outs = [synthetic(folder, "synthetic_a", 4_000_000, 1), synthetic(folder, "synthetic_b", 8_000_000, 2)]
    runs = []
    for _ in range(2):  # alternating, best of two each: the machine is shared and noisy
        for cache in ("cache_megatron", "cache_ours"):
            shutil.rmtree(folder / cache, ignore_errors=True)
        runs.append((timed(lambda: megatron_blend(outs, [0.3, 0.7], samples, seq_length, folder / "cache_megatron")),
                     timed(lambda: gpt.GPTDataset.from_manifests(outs, [0.3, 0.7], seq_length=seq_length, split="99,1,0",
                                                                  num_samples=samples, cache_dir=folder / "cache_ours"))))
    (theirs_s, theirs), (ours_s, ours) = min((r[0] for r in runs), key=lambda r: r[0]), min((r[1] for r in runs), key=lambda r: r[0])
    assert np.array_equal(ours.dataset_index, theirs.dataset_index)
    assert all(np.array_equal(s.shuffle_index, m.shuffle_index) for s, m in zip(ours.sources, theirs.datasets))
    tokens = sum(json.loads((o / "manifest.json").read_text())["datasets"]["text"]["shards"][0]["tokens"] for o in outs)
    print(f"index build   {samples:,} samples of {seq_length} from 2 datasets ({tokens / 1e9:.1f} B tokens, 12 M documents): "
          f"ours {ours_s:.2f}s, Megatron-Core {theirs_s:.2f}s, speed ratio {theirs_s / ours_s:.2f}")

    weights = gpt.normalize([0.3, 0.7])
    index, sample = np.zeros(samples, np.int16), np.zeros(samples, np.int64)
    helper_s, _ = timed(lambda: helpers.build_blending_indices(index, sample, np.asarray(weights), 2, samples, False))
    blend_s, _ = timed(lambda: gpt.blending_indices(weights, samples))
    print(f"  blending    {samples:,} samples: ours {blend_s:.2f}s, helper {helper_s:.2f}s, speed ratio {helper_s / blend_s:.2f}")
    source, mid = ours.sources[1], theirs.datasets[1]
    args = (mid.dataset.sequence_lengths, np.asarray(source.document_index), seq_length, len(source.document_index) // len(mid.indices),
            int(mid.dataset.sequence_lengths[mid.indices].sum()))
    helper_s, expected = timed(lambda: helpers.build_sample_idx(*args, True, True))
    sample_s, got = timed(lambda: gpt.sample_index(*args, True, 1))
    assert np.array_equal(got, expected)
    print(f"  sample idx  {len(got) - 1:,} samples: ours {sample_s:.2f}s, helper {helper_s:.2f}s, speed ratio {helper_s / sample_s:.2f}")


def getitem(ours, theirs, count: int) -> None:
    order = np.random.default_rng(0).integers(0, len(ours), count)
    for i in order[:100]:  # warm the page cache and the cached masks for both
        ours[int(i)], theirs[int(i)]
    ours_s = min(timed(lambda: [ours[int(i)] for i in order])[0] for _ in range(2))
    theirs_s = min(timed(lambda: [theirs[int(i)] for i in order])[0] for _ in range(2))
    print(f"__getitem__   random access, {count:,} samples of {ours.options.seq_length}: ours {count / ours_s:,.0f}/s, "
          f"Megatron-Core {count / theirs_s:,.0f}/s, ratio {theirs_s / ours_s:.2f}")


def dataloader(ours, theirs, batches: int, workers: int, label: str, batch_size: int = 8) -> None:
    def rate(loader, count):
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        started = time.perf_counter()
        n = sum(len(next(it)["tokens"]) for _ in range(count))
        return n / (time.perf_counter() - started)

    # best of three runs each, alternating: a shared machine is noisy. torch's DataLoader over
    # Megatron's dataset is ~20x slower: fewer batches for it.
    rates = [(rate(ours.dataloader(batch_size=batch_size, num_workers=workers), batches),
              rate(torch.utils.data.DataLoader(theirs, batch_size=batch_size, num_workers=workers), max(20, batches // 10)))
             for _ in range(3)]
    ours_rate, theirs_rate = max(r[0] for r in rates), max(r[1] for r in rates)
    print(f"DataLoader    {workers} workers, batch {batch_size}, {label}: ours {ours_rate:,.0f} samples/s, "
          f"Megatron-Core in torch's DataLoader {theirs_rate:,.0f} samples/s, ratio {ours_rate / theirs_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "bench_loaders")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Megatron-Core's, about Transformer Engine and Apex
    args.data.mkdir(parents=True, exist_ok=True)
    for cache in args.data.glob("cache_*"):
        shutil.rmtree(cache)
    (args.data / "store").unlink(missing_ok=True)
    # Megatron's BlendedDataset asks torch.distributed for the rank when it caches: a group of one.
    torch.distributed.init_process_group("gloo", init_method=f"file://{args.data / 'store'}", rank=0, world_size=1)
    print(f"cpu: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, numpy {np.__version__}")

    index_build(args.data, args.samples, args.seq_length)
    outs = tokenized(args.data)
    for flags, label in (({}, "attention masks"), ({"create_attention_mask": False}, "no attention masks")):
        ours = gpt.GPTDataset.from_manifests(outs, [0.3, 0.7], seq_length=args.seq_length, split="99,1,0",
                                             num_samples=100_000, cache_dir=args.data / "cache_ours", **flags)
        theirs = megatron_blend(outs, [0.3, 0.7], 100_000, args.seq_length, args.data / f"cache_megatron{len(flags)}", **flags)
        if not flags:
            getitem(ours, theirs, 20_000)
        for batch_size in (8, 32):
            dataloader(ours, theirs, 2000 // batch_size * 8, args.workers, label, batch_size)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
