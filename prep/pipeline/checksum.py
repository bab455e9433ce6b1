"""Checksums, one place: xxh3-128 for datasets and weights, xxh64 where latent caches record it."""

from __future__ import annotations

from pathlib import Path

import xxhash

BLOCK = 16 << 20
WEIGHTS = "xxh3_128"  # the manifest key of a weights folder's hash


def hasher():
    """A streaming xxh3-128 (`update`, `hexdigest`): the checksum of every dataset file."""
    return xxhash.xxh3_128()


def file_checksum(path: Path) -> str:
    """xxh3-128 of a file, read 16 MiB at a time: what the manifest records for each shard."""
    digest = hasher()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def item_checksum(data: bytes) -> str:
    """xxh64 of a latent cache's item or metadata file (the `xxh64` field caches carry)."""
    return xxhash.xxh64_hexdigest(data)


def folder_checksum(folder: Path) -> str:
    """xxh3-128 over every file of a model component folder (relative names and bytes, sorted;
    hidden files left out): weights, config, tokenizer files."""
    digest = hasher()
    files = (p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in sorted(files):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK):
                digest.update(chunk)
    return digest.hexdigest()
