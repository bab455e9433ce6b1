"""Benchmark `prep tokenize --recipe retrieval` and `loaders.retrieval`, against references
measured in the same run.

    python bench/retrieval.py [--queries 20000] [--pool 4000] [--negatives 7] [--tokenizer DIR] [--workers N]

A corpus where documents repeat as other queries' negatives (each query: a positive and 1..2n
negatives drawn from a pool of real passages). Prints:
  - storage: the output's bytes against the distinct documents' tokens plus the table;
  - tokenize: characters per second of `--recipe retrieval` against `--recipe text` over the same
    characters (each distinct text, queries and documents, once: the work either must do);
  - loader: batches per second of RetrievalDataset + collate against AutoModel's
    make_retrieval_dataset + BiEncoderCollator (which tokenizes at train time) on the same rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/tokenize.py must not shadow the stdlib's tokenize

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared"))


def _passages(n: int, rng: random.Random) -> list[str]:
    lines = [s for s in (SHARED / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines() if s.strip()]
    out = []
    for i in range(n):
        start = rng.randrange(len(lines))
        out.append(f"[{i}] " + " ".join(lines[start:start + rng.randint(3, 25)]))
    return out


def _corpus(folder: Path, queries: int, pool: int, negatives: int, seed: int = 0) -> tuple[Path, Path, int]:
    rng = random.Random(seed)
    docs = _passages(pool, rng)
    rows, used = [], set()
    for q in range(queries):
        positive = rng.randrange(pool)
        negs = rng.sample(range(pool), rng.randint(1, 2 * negatives))
        used.update([positive, *negs])
        rows.append({"query": f"query {q}: " + docs[rng.randrange(pool)][:120], "pos_doc": docs[positive], "neg_doc": [docs[n] for n in negs]})
    retrieval = folder / "retrieval.jsonl"
    retrieval.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [r["query"] for r in rows] + [docs[i] for i in sorted(used)]
    text = folder / "text.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return retrieval, text, sum(map(len, texts))


def _prep(*args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prep.cli", *map(str, args)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=4_000)
    parser.add_argument("--negatives", type=int, default=7, help="negatives a batch item asks for (rows have 1..2n)")
    parser.add_argument("--tokenizer", default=str(SHARED / "data" / "tokenizers" / "llama3"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200, help="loader batches to time, each side")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    try:
        retrieval, text, chars = _corpus(tmp, args.queries, args.pool, args.negatives)
        common = ["--tokenizer", args.tokenizer, "--workers", args.workers, "--overwrite"]
        t_text = min(_prep("tokenize", text, "-o", tmp / "text", *common) for _ in range(2))
        t_retr = min(_prep("tokenize", retrieval, "-o", tmp / "retr", "--recipe", "retrieval", *common) for _ in range(2))
        m = json.loads((tmp / "retr" / "manifest.json").read_text())
        out_bytes = sum((tmp / "retr" / p).stat().st_size for p in os.listdir(tmp / "retr") if not p.endswith(".json"))
        itemsize = np.dtype(m["datasets"]["documents"]["dtype"]).itemsize
        distinct = m["datasets"]["documents"]["tokens"] * itemsize
        queries = m["datasets"]["queries"]["tokens"] * itemsize
        index = sum(f["bytes"] for d in m["datasets"].values() for s in d["shards"] for f in (s["idx"],))
        table = m["stats"]["table_bytes"]
        naive = (m["datasets"]["documents"]["tokens"] / m["stats"]["distinct_documents"]) * m["stats"]["documents_referenced"] * itemsize
        print(f"corpus      {args.queries:,} queries, {m['stats']['distinct_documents']:,} distinct documents, "
              f"{m['stats']['documents_referenced']:,} references; {retrieval.stat().st_size / 1e6:,.1f} MB JSONL")
        print(f"storage     output {out_bytes / 1e6:,.2f} MB = distinct documents' tokens {distinct / 1e6:,.2f} MB + queries "
              f"{queries / 1e6:,.2f} MB + table {table / 1e6:,.2f} MB + indexes {index / 1e6:,.2f} MB "
              f"(each reference stored: about {naive / 1e6:,.1f} MB of document tokens)")
        print(f"tokenize    {chars / 1e6:,.1f} M distinct characters: retrieval {chars / t_retr / 1e6:,.2f} M chars/s "
              f"({t_retr:.2f}s), text {chars / t_text / 1e6:,.2f} M chars/s ({t_text:.2f}s): ratio {t_text / t_retr:.2f}x "
              f"(target >= 0.7x; {args.workers} worker(s), process start included)")

        from transformers import AutoTokenizer

        from loaders.retrieval import RetrievalDataset, collate
        from nemo_automodel.components.datasets.llm.retrieval_collator import BiEncoderCollator
        from nemo_automodel.components.datasets.llm.retrieval_dataset import make_retrieval_dataset

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tok.pad_token = tok.pad_token or tok.eos_token
        n, b = args.negatives, args.batch_size
        ours = RetrievalDataset(tmp / "retr", negatives=n, q_max_len=64, p_max_len=256)
        os.environ.setdefault("HF_DATASETS_CACHE", str(tmp / "hf"))
        theirs = make_retrieval_dataset(data_dir_list=[str(retrieval)], n_passages=n + 1)
        collator = BiEncoderCollator(tok, q_max_len=64, p_max_len=256, pad_to_multiple_of=8)
        order = np.random.default_rng(0).permutation(len(ours))

        def time_batches(make) -> float:
            started = time.perf_counter()
            for k in range(args.batches):
                make(order[(k * b) % len(order):][:b])
            return args.batches / (time.perf_counter() - started)

        ours_rate = time_batches(lambda rows: collate([ours[int(i)] for i in rows], tok.pad_token_id, 8))
        theirs_rate = time_batches(lambda rows: collator([theirs[int(i)] for i in rows]))
        print(f"loader      batches of {b} queries x {1 + n} documents: loaders.retrieval {ours_rate:,.1f}/s, "
              f"AutoModel dataset + BiEncoderCollator {theirs_rate:,.1f}/s: ratio {ours_rate / theirs_rate:.1f}x (target >= 10x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
