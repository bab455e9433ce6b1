"""Benchmark finalize and `prep merge` against `cp` of the same bytes, in one run.

    python bench/merge.py [--gb 10] [--parts 1000] [--outputs 10] [--dir DIR]

Synthesizes `--parts` unit parts (uint16 tokens, documents of random lengths) totalling `--gb`
GB, then times, each followed by a sync so that every byte is on disk:
  - cp:       `cp` of the part files into another folder (the reference);
  - finalize: prep.writers.megatron_stream.finalize_key (what a tokenize run of unpacked data uses)
              merging the parts into one .bin/.idx;
  - merge:    prep merge of `--outputs` finished outputs (made from the same parts) into one.
Prints GB/s of each and its ratio to cp (target: at least 0.8x).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/tokenize.py must not shadow the stdlib's tokenize

import argparse
import shutil
import subprocess
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def _parts(folder: Path, parts: int, total_bytes: int) -> int:
    """Write the parts; returns the token count."""
    rng = np.random.default_rng(0)
    per_part = total_bytes // parts // 2
    tokens = 0
    block = rng.integers(0, 50000, size=per_part, dtype=np.uint16)  # one random block, rotated per part
    for i in range(parts):
        data = np.roll(block, i * 7919)
        data.tofile(folder / f"{i:06d}.text.bin")
        lengths = rng.integers(200, 1800, size=per_part // 1000 + 2).astype(np.int64)
        lengths = lengths[np.cumsum(lengths) < per_part]
        lengths = np.append(lengths, per_part - lengths.sum()).astype(np.int32)
        with open(folder / f"{i:06d}.text.seq.npy", "wb") as f:
            np.save(f, lengths)
            np.save(f, np.ones(len(lengths), np.int32))
        tokens += per_part
    return tokens


def _timed(label: str, work, size: int, reference: float | None = None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    work()
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - start
    rate = size / seconds / 1e9
    print(f"  {label:<34} {seconds:7.2f}s  {rate:6.2f} GB/s" + (f"  {rate / reference:.2f}x cp" if reference else ""), flush=True)
    return rate


def _output(folder: Path, work: Path, units: list, tokens: int) -> None:
    """A finished Megatron output of these parts, with the manifest prep merge reads."""
    from prep import manifest as writing
    from prep.writers import megatron_stream

    folder.mkdir()
    entry = megatron_stream.finalize_key(work, folder, units, "text", np.uint16, None)
    config = {"recipe": "text", "eod": True, "bos": False, "shard_tokens": None, "nanogpt_header": "current", "pack": None}
    tokenizer = {"sha256": "bench", "dtype": "uint16", "bos_id": None, "source": "bench", "vocab_size": 50257}
    stats = {"documents": entry["documents"], "tokens": entry["tokens"], "empty_documents": 0, "skipped": {}, "skipped_total": 0,
             "length_histogram": entry["length_histogram"]}
    writing.write(folder, writing.build("tokens", "megatron", f"bench-{folder.name}", config, tokenizer,
                                        [{"path": str(folder), "bytes": tokens * 2, "records": entry["documents"]}],
                                        {"text": entry}, stats, {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=10.0)
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--outputs", type=int, default=10)
    parser.add_argument("--dir", default=None, help="Where the bytes go (default: a temporary folder)")
    args = parser.parse_args()

    from prep.merge import merge
    from prep.writers import megatron_stream

    root = Path(tempfile.mkdtemp(prefix="prep-bench-merge-", dir=args.dir))
    try:
        work = root / "work"
        (work / "parts").mkdir(parents=True)
        start = time.perf_counter()
        tokens = _parts(work / "parts", args.parts, int(args.gb * 1e9))
        size = tokens * 2
        print(f"{args.parts} parts, {size / 1e9:.2f} GB of uint16 tokens, written in {time.perf_counter() - start:.1f}s ({root})")
        units = [SimpleNamespace(id=f"{i:06d}") for i in range(args.parts)]
        files = sorted(str(p) for p in (work / "parts").glob("*.text.bin"))
        (root / "copy").mkdir()
        cp = _timed("cp of the part files", lambda: subprocess.run(["cp", *files, str(root / "copy")], check=True), size)
        shutil.rmtree(root / "copy")
        (root / "final").mkdir()
        _timed("finalize (one .bin/.idx)", lambda: megatron_stream.finalize_key(work, root / "final", units, "text", np.uint16, None), size, cp)
        shutil.rmtree(root / "final")
        per = -(-args.parts // args.outputs)
        for k in range(args.outputs):
            _output(root / f"out{k:03d}", work, units[k * per:(k + 1) * per], tokens)
        shutil.rmtree(work)
        outputs = [str(root / f"out{k:03d}") for k in range(args.outputs)]
        _timed(f"prep merge of {args.outputs} outputs", lambda: merge(outputs, str(root / "merged")), size, cp)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
