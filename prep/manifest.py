"""Build and atomically write `manifest.json`: the last file written, so it means complete."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from loaders.manifest import MANIFEST_NAME, SCHEMA
from prep import __version__
from prep.pipeline.durable import write_json


def build(kind: str, format: str, fingerprint: str, config: dict, tokenizer: dict | None, inputs: list[dict],
          datasets: dict, stats: dict, timings: dict, encoders: dict | None = None) -> dict:
    """The manifest of a finished output: `tokenizer` for token datasets, `encoders` (the VAE and
    text encoders' identities and the encode settings) for latent caches."""
    identity = {"tokenizer": tokenizer} if encoders is None else {"encoders": encoders}
    return {
        "schema": SCHEMA,
        "kind": kind,
        "format": format,
        "tool": {"name": "prep", "version": __version__},
        "fingerprint": fingerprint,
        "config": config,
        **identity,
        "inputs": inputs,
        "datasets": datasets,
        "stats": stats,
        "timings": {**timings, "finalized": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }


def write(out: Path, manifest: dict) -> Path:
    path = out / MANIFEST_NAME
    write_json(path, manifest)
    return path
