"""Build and atomically write `manifest.json`: the last file written, so it means complete."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from loaders.manifest import MANIFEST_NAME, SCHEMA
from prep import __version__
from prep.plan import write_json_atomic


def build(kind: str, format: str, fingerprint: str, config: dict, tokenizer: dict, inputs: list[dict],
          datasets: dict, stats: dict, timings: dict) -> dict:
    return {
        "schema": SCHEMA,
        "kind": kind,
        "format": format,
        "tool": {"name": "prep", "version": __version__},
        "fingerprint": fingerprint,
        "config": config,
        "tokenizer": tokenizer,
        "inputs": inputs,
        "datasets": datasets,
        "stats": stats,
        "timings": {**timings, "finalized": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }


def write(out: Path, manifest: dict) -> Path:
    path = out / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path
