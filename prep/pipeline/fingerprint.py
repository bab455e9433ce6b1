"""Fingerprints: what decides an output's bytes, hashed, so that resume and loaders can check it."""

from __future__ import annotations

import hashlib
import json


def fingerprint(values: dict, compact: bool = True) -> str:
    """sha256 (32 hex digits) over the canonical JSON of `values` (sorted keys). Latent caches
    were fingerprinted with json's default separators (`compact=False`), kept so that caches made
    before still resume and verify."""
    separators = (",", ":") if compact else None
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=separators).encode()).hexdigest()[:32]
