"""Benchmark the instruction and completion recipes under both mask conventions against plain-text
tokenization of the same characters, in one run.

    python bench/conventions.py [--size-mb 20] [--tokenizer DIR] [--workers N]

Each real-text document of the benchmark corpus (bench/corpus.py) is cut at a line into a prompt
and an answer, written as instruction/completion records and, the same characters, as plain text
records. Prints each `prep tokenize` run and its throughput against the text run: prep's own
convention (one encode of the whole sample, masked by offsets) and AutoModel's (pieces tokenized
apart, as its format_prompt_completion and SFTSingleTurnPreprocessor do).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/: its tokenize.py would shadow the stdlib's

import orjson

from bench.sft import arguments, run


def build(source: Path, size: int, records: Path, text: Path) -> tuple[int, int]:
    """Write prompt/answer records and text records of the same characters; (content bytes, records)."""
    content = count = 0
    with open(source, "rb") as f, open(records, "wb") as r, open(text, "wb") as t:
        for line in f:
            lines = orjson.loads(line)["text"].split("\n")
            if len(lines) < 2:
                continue
            cut = max(1, len(lines) * 2 // 3)
            prompt, answer = "\n".join(lines[:cut]), "\n" + "\n".join(lines[cut:])
            r.write(orjson.dumps({"prompt": prompt, "answer": answer}) + b"\n")
            t.write(orjson.dumps({"text": prompt + answer}) + b"\n")
            content, count = content + len((prompt + answer).encode()), count + 1
            if content >= size:
                break
    return content, count


def main() -> None:
    args, source = arguments(__doc__)
    records, text = args.data / "conventions_records.jsonl", args.data / "conventions_text.jsonl"
    content, count = build(source, args.size_mb * 10**6, records, text)
    common = ["--tokenizer", args.tokenizer, "--workers", str(args.workers), "--overwrite"]
    run([str(text), "-o", str(args.data / "warm"), *common])  # resolve the tokenizer cache once
    t_text = run([str(text), "-o", str(args.data / "conventions_text_out"), *common])
    print(f"content     {content / 1e6:.1f} MB in {count:,} records, {args.workers} worker(s), {Path(args.tokenizer).name}")
    print(f"text        {t_text:.2f}s = {content / 1e6 / t_text:.1f} MB/s of content")
    columns = {"instruction": "question=prompt,answer=answer", "completion": "context=prompt,answer=answer"}
    for recipe, cols in columns.items():
        for convention in ("prep", "automodel"):
            took = run([str(records), "-o", str(args.data / f"conventions_{recipe}_{convention}"), "--recipe", recipe,
                        "--columns", cols, "--mask-convention", convention, *common])
            print(f"{recipe:<12}{convention:<10} {took:.2f}s = {content / 1e6 / took:.1f} MB/s, {t_text / took:.2f} of text")


if __name__ == "__main__":
    main()
