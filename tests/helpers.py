"""What the tests share: the paths of ../shared, the real CLI in a fresh process, corpora of real text."""

import os
import random
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared")).resolve()
TOKENIZERS = SHARED / "data" / "tokenizers"
REF = ROOT / "tests" / "data" / "megatron_ref"


def prep(*args, check: bool = True, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh process, as a user would."""
    result = subprocess.run([sys.executable, "-m", "prep.cli", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"prep {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def read_bytes(folder: Path) -> dict[str, bytes]:
    """Every data file (.bin/.idx) of an output folder by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix in (".bin", ".idx")}


def botchan_documents(n: int, seed: int = 0) -> list[dict]:
    """Real text (Botchan, Project Gutenberg) cut into n documents of random lengths."""
    lines = (SHARED / "data" / "text" / "botchan.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n").split("\n")
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        start = rng.randrange(len(lines))
        docs.append({"id": i, "text": "\n".join(lines[start:start + rng.randint(0, 60)])})
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def assert_same_batches(ours: list[dict], theirs: list[dict]) -> None:
    """Batch for batch the same keys, and the same values: tensors of one dtype, shape and content."""
    import torch

    assert len(ours) == len(theirs) > 0
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert sorted(a) == sorted(b), (k, sorted(a), sorted(b))
        for key in b:
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (k, key, a[key].shape, b[key].shape)
                assert torch.equal(a[key], b[key]), (k, key)
            else:
                assert a[key] == b[key], (k, key)
