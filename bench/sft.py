"""Benchmark SFT preparation against plain-text tokenization of the same characters, in one run.

    python bench/sft.py [--size-mb 20] [--tokenizer DIR] [--workers N]

Builds conversations from the real-text benchmark corpus (bench/corpus.py): each document's
lines alternate user / assistant turns. The same characters are written once as chat records
and once as plain text records. Prints both `prep tokenize` runs (chat with exact masks vs
text), their throughput ratio, and packing: efficiency at 8192 and time against tokenization.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Before any other import: run as a script, bench/ would be first on the path and this
# folder's tokenize.py would shadow the standard library's.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]


def build(source: Path, size: int, chat: Path, text: Path) -> int:
    """Write chat and text records of the same contents; returns content bytes."""
    content = 0
    rng = np.random.default_rng(0)
    with open(source, "rb") as f, open(chat, "wb") as c, open(text, "wb") as t:
        for line in f:
            lines = [x for x in orjson.loads(line)["text"].split("\n") if x.strip()]
            turns = 2 * int(rng.integers(1, 5))  # 1 to 4 exchanges, as in typical SFT data
            if len(lines) < turns:
                continue
            cuts = np.linspace(0, len(lines), turns + 1).astype(int)
            contents = ["\n".join(lines[a:b]) for a, b in zip(cuts, cuts[1:])]
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": x} for i, x in enumerate(contents)]
            c.write(orjson.dumps({"messages": messages}) + b"\n")
            t.write(orjson.dumps({"text": "".join(contents)}) + b"\n")
            content += sum(len(x.encode()) for x in contents)
            if content >= size:
                break
    return content


def run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", *args, "--no-progress"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def arguments(doc: str) -> tuple[argparse.Namespace, Path]:
    """The SFT benchmarks' options, and the 100 MB real-text corpus they cut records from (built once)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "data" / "tokenizers" / "smollm2-135m-instruct"))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    source = args.data / "corpus_100mb.jsonl"
    if not source.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "corpus.py"), str(source), "--size-mb", "100"], check=True)
    return args, source


def main() -> None:
    args, source = arguments(__doc__)
    chat, text = args.data / "sft_chat.jsonl", args.data / "sft_text.jsonl"
    content = build(source, args.size_mb * 10**6, chat, text)
    common = ["--tokenizer", args.tokenizer, "--workers", str(args.workers), "--overwrite"]
    run([str(text), "-o", str(args.data / "warm"), *common])  # resolve the tokenizer cache once
    t_text = run([str(text), "-o", str(args.data / "sft_text_out"), *common])
    t_chat = run([str(chat), "-o", str(args.data / "sft_chat_out"), "--recipe", "chat", *common])
    print(f"content     {content / 1e6:.1f} MB in {sum(1 for _ in open(chat)):,} conversations, {args.workers} worker(s), {Path(args.tokenizer).name}")
    print(f"text        {t_text:.2f}s = {content / 1e6 / t_text:.1f} MB/s of content")
    print(f"chat+masks  {t_chat:.2f}s = {content / 1e6 / t_chat:.1f} MB/s of content")
    print(f"ratio       chat / text throughput = {t_text / t_chat:.2f}")

    from loaders.formats.indexed import IndexedDataset
    from prep.tokenize.pack import plan_packs

    lengths = np.asarray(IndexedDataset(args.data / "sft_chat_out" / "tokens_document").sequence_lengths, np.int64)
    # a realistic mix at 8192: real sample lengths, scaled so the median is about 1k tokens
    mix = np.clip((lengths * (1024 / max(1, np.median(lengths)))).astype(np.int64), 1, 8192)
    started = time.perf_counter()
    order, sizes = plan_packs(mix, 8192)
    t_pack = time.perf_counter() - started
    print(f"packing     {len(mix):,} samples (median {int(np.median(mix))}, p99 {int(np.percentile(mix, 99))} tokens) into "
          f"{len(sizes):,} packs of 8192: {100 * mix.sum() / (len(sizes) * 8192):.2f}% full in {t_pack:.3f}s "
          f"({len(mix) / t_pack:,.0f} samples/s vs tokenization {len(mix) / t_chat:,.0f} samples/s)")


if __name__ == "__main__":
    main()
