"""Build a deterministic JSONL corpus of real text for tokenizer benchmarks.

    python bench/corpus.py OUT.jsonl --size-mb 100 [--seed 0]

Everything is read from this machine (no network): Python stdlib sources,
pydoc topics, botchan.txt, /usr/share/doc, /usr/share/man and, only if still
short, the interpreter's site-packages. Files are split into documents of a
random number of lines so the length mix resembles real workloads. Output is
streamed, so memory stays flat whatever --size-mb is.
"""

import argparse
import gzip
import os
import random
import sys
import sysconfig
import time

import orjson

BOTCHAN = "/work/shared/data/text/botchan.txt"
MAX_FILE = 20_000_000  # bytes after decompression; bigger files are logs/data, not prose


def walk(root, keep, skip_dirs=()):
    """Yield file paths under root in sorted order, so the output is reproducible."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            # Symlinks in /usr/share/doc mostly point at files we already read.
            if keep(name) and not os.path.islink(path):
                yield path


def read_text(path):
    """Return the file as str, or None if it is binary, not UTF-8 or too big."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
        else:
            if os.path.getsize(path) > MAX_FILE:
                return None
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if len(data) > MAX_FILE or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def sources():
    """Yield (source_name, max_lines_per_doc, text) in priority order."""
    stdlib = sysconfig.get_paths()["stdlib"]
    # pyenv-style layouts keep site-packages inside the stdlib dir; that is
    # third-party code and comes last, not first.
    for p in walk(stdlib, lambda n: n.endswith(".py"), {"site-packages", "dist-packages", "__pycache__"}):
        yield "stdlib", 200, read_text(p)

    from pydoc_data.topics import topics
    for key in sorted(topics):
        yield "pydoc", 200, topics[key]

    # Prose: small chunks, like chat/paragraph-sized inputs.
    yield "botchan", 40, read_text(BOTCHAN)

    for p in walk("/usr/share/doc", lambda n: True):
        yield "doc", 200, read_text(p)

    # Roff source is kept as-is: markup-heavy text is a useful tokenizer case.
    for p in walk("/usr/share/man", lambda n: n.endswith(".gz")):
        yield "man", 200, read_text(p)

    texty = (".py", ".md", ".txt", ".rst")
    seen = set()
    for key in ("purelib", "platlib"):
        sp = sysconfig.get_paths()[key]  # resolves under sys.prefix (the venv)
        if sp in seen or not os.path.isdir(sp):
            continue
        seen.add(sp)
        for p in walk(sp, lambda n: n.endswith(texty), {"__pycache__"}):
            yield "site-packages", 200, read_text(p)


def documents(rng):
    """Split each source text into documents of 1..max_lines lines."""
    for name, max_lines, text in sources():
        if not text:
            continue
        lines = text.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            n = rng.randint(1, max_lines)
            doc = "".join(lines[i:i + n])
            i += n
            if doc.strip():
                yield name, doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    target = int(args.size_mb * 1e6)
    tmp = args.out + ".tmp"
    t0 = time.perf_counter()
    written = docs = passes = 0
    used = {}
    with open(tmp, "wb", buffering=1 << 20) as f:
        while written < target:
            # Each pass re-splits the same text with a fresh seed, so a short
            # machine still fills the target without repeating identical docs.
            rng = random.Random(args.seed * 1_000_003 + passes)
            passes += 1
            before = written
            for name, doc in documents(rng):
                line = orjson.dumps({"text": doc}) + b"\n"  # orjson never escapes non-ASCII
                f.write(line)
                written += len(line)
                docs += 1
                used[name] = used.get(name, 0) + len(line)
                if written >= target:
                    break
            if written == before:
                sys.exit("corpus.py: no readable text found")
    os.replace(tmp, args.out)

    mix = ", ".join(f"{k} {v / 1e6:.1f}MB" for k, v in used.items())
    cycled = f", cycled {passes} passes" if passes > 1 else ""
    print(f"corpus.py: {docs} docs, {written} bytes in {time.perf_counter() - t0:.1f}s "
          f"[{mix}]{cycled} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
