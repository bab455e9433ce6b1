"""Benchmark reading through `loaders.automodel` against NeMo AutoModel's own datasets, samples per
second, in one run, on the same rows:

    python bench/automodel.py [--conversations 2000] [--documents 4000] [--tokenizer DIR]

  - chat SFT: loaders.automodel.ChatDataset over prep's offline output (--mask-convention
    automodel, so the items are equal) against AutoModel's ChatDataset, which renders, tokenizes
    and masks each row at train time;
  - pretraining: loaders.automodel.MegatronPretraining against AutoModel's MegatronPretraining
    over the same prep output (both read token ids; AutoModel builds its indices with its C++
    helper, ours in numpy), samples after the index is built.
Each is timed over every item, after one warm-up item; the build time is printed apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/tokenize.py must not shadow the stdlib's tokenize

import argparse
import json
import os
import subprocess
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared"))


def _conversations(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    lines = [s for s in (SHARED / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines() if s.strip()]
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "You answer briefly."}] if i % 3 == 0 else []
        for _ in range(1 + i % 3):
            a, b = rng.randrange(len(lines) - 6), rng.randrange(len(lines) - 6)
            messages += [{"role": "user", "content": " ".join(lines[a:a + 2])},
                         {"role": "assistant", "content": " ".join(lines[b:b + 4])}]
        out.append({"messages": messages})
    return out


def _rate(dataset, label: str) -> float:
    dataset[0]
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    rate = len(dataset) / (time.perf_counter() - start)
    print(f"  {label:<40} {rate:>12,.0f} samples/s")
    return rate


def _prep(*args) -> None:
    subprocess.run([sys.executable, "-m", "prep.cli", *map(str, args)], check=True, capture_output=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--tokenizer", default=str(SHARED / "data" / "tokenizers" / "smollm2-135m-instruct"))
    args = parser.parse_args()

    import logging

    import torch
    from transformers import AutoTokenizer

    from loaders import automodel

    logging.disable(logging.WARNING)  # AutoModel's per-tokenizer pad warnings
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chats = tmp / "chat.jsonl"
        chats.write_text("".join(json.dumps(c) + "\n" for c in _conversations(args.conversations)))
        _prep("tokenize", chats, "-o", tmp / "sft", "--recipe", "chat", "--tokenizer", args.tokenizer,
              "--mask-convention", "automodel", "--workers", "2")
        from nemo_automodel.components.datasets.llm.chat_dataset import ChatDataset

        print(f"chat SFT, {args.conversations:,} conversations ({args.tokenizer}):")
        theirs = _rate(ChatDataset(str(chats), tok), "AutoModel ChatDataset (online)")
        ours = _rate(automodel.ChatDataset(str(tmp / "sft"), tokenizer=tok), "loaders.automodel.ChatDataset (offline)")
        print(f"  ratio {ours / theirs:.1f}x (target 10x)")

        docs = tmp / "docs.jsonl"
        lines = [s for s in (SHARED / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines() if s.strip()]
        docs.write_text("".join(json.dumps({"text": " ".join(lines[i % len(lines):i % len(lines) + 8])}) + "\n"
                                for i in range(args.documents)))
        _prep("tokenize", docs, "-o", tmp / "text", "--tokenizer", args.tokenizer)
        from nemo_automodel.components.datasets.llm.megatron_dataset import MegatronPretraining

        from loaders.manifest import dataset_prefixes, load

        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp / 'pg'}", rank=0, world_size=1)
        options = dict(seq_length=256, split="99,1,0", num_train_samples=2000, seed=3, splits_to_build="train")
        start = time.perf_counter()
        built = MegatronPretraining(paths=dataset_prefixes(load(tmp / "text")), tokenizer=tok,
                                    index_mapping_dir=str(tmp / "am-cache"), **options)
        built.build()
        theirs_ds = built.get_dataset("train")
        theirs_build = time.perf_counter() - start
        start = time.perf_counter()
        ours_ds = automodel.MegatronPretraining(paths=str(tmp / "text"), tokenizer=tok, index_mapping_dir=str(tmp / "cache"), **options)
        len(ours_ds)  # the split is built on first use
        ours_build = time.perf_counter() - start
        print(f"pretraining, {len(ours_ds):,} samples of 256 tokens (index build: AutoModel {theirs_build:.2f}s, ours {ours_build:.2f}s):")
        theirs = _rate(theirs_ds, "AutoModel MegatronPretraining")
        ours = _rate(ours_ds, "loaders.automodel.MegatronPretraining")
        print(f"  ratio {ours / theirs:.2f}x")
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
