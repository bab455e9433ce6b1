"""Records from JSONL (.gz/.zst), JSON documents, CSV/TSV, Parquet and local Hugging Face datasets, streamed in batches.

A source expands the user's inputs into files (`expand_inputs`), cuts each file into work
units (`plan_file`), and reads a unit as batches of records (`read_unit`).
"""

from __future__ import annotations

import glob
import importlib
import json
import os
from pathlib import Path

from prep.errors import PrepError

# Longest suffix first: ".jsonl.zst" must win over ".zst".
KINDS = {
    ".jsonl.zst": "jsonl.zst", ".json.zst": "jsonl.zst", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz",
    ".jsonl": "jsonl", ".json": "jsonl", ".zst": "jsonl.zst", ".gz": "jsonl.gz",
    ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "tsv",
}
# Modules imported on first use: pyarrow alone costs a tenth of a second at every start.
READERS = {"jsonl": "jsonl", "jsonl.gz": "jsonl", "jsonl.zst": "jsonl", "parquet": "parquet", "arrow": "arrow",
           "csv": "delimited", "tsv": "delimited", "json": "json_document"}


def _reader(path: str | Path):
    return importlib.import_module(f"prep.sources.{READERS[file_kind(path)]}")


def file_kind(path: str | Path) -> str | None:
    """kind_of, and for a plain `.json` file a look inside: JSON Lines, or one JSON document."""
    kind = kind_of(path)
    if kind == "jsonl" and str(path).lower().endswith(".json"):
        from prep.sources import json_document

        if json_document.is_document(Path(path)):
            return "json"
    return kind


def kind_of(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, kind in KINDS.items():
        if name.endswith(suffix):
            return kind
    return None


def _hf_saved_files(folder: Path) -> list[Path]:
    """Arrow files of a `Dataset.save_to_disk` folder, in the dataset's row order."""
    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        raise PrepError(f"{folder}: a DatasetDict with splits {', '.join(splits)}; pass one split's folder, e.g. {folder / splits[0]}")
    state = json.loads((folder / "state.json").read_text())
    return [folder / entry["filename"] for entry in state["_data_files"]]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files to read, sorted by resolved path, each once (a file reached twice, through a symlink
    or two arguments, is read once): files as given, folders searched recursively (hidden files
    and folders passed over; a `save_to_disk` folder inside gives its arrow files), globs expanded."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _folder_files(path)
            if not files:
                raise PrepError(f"{path}: no .jsonl, .json, .gz, .zst, .csv, .tsv, .parquet or .arrow files in this folder")
            found.update(files)
        elif path.is_file():
            if kind_of(path) is None:
                raise PrepError(f"{path}: unknown input type; expected .jsonl/.json (optionally .gz/.zst), .csv, .tsv, .parquet or .arrow")
            found.add(path)
        elif glob.has_magic(item):
            matches = [Path(p) for p in glob.glob(item, recursive=True) if kind_of(p)]
            if not matches:
                raise PrepError(f"{item}: the pattern matches no input files")
            found.update(matches)
        else:
            raise PrepError(f"{item}: no such file or folder")
    return sorted({p.resolve() for p in found}, key=str)


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").exists() or (folder / "dataset_dict.json").exists()


def _folder_files(folder: Path) -> list[Path]:
    """Input files under `folder`: a `save_to_disk` folder (here or below) gives its arrow files
    (its state.json and dataset_info.json are no records); hidden entries are passed over."""
    if _is_saved_dataset(folder):
        return _hf_saved_files(folder)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in [d for d in dirs if _is_saved_dataset(Path(root) / d)]:
            dirs.remove(d)
            files += _hf_saved_files(Path(root) / d)
        files += [Path(root) / n for n in names if not n.startswith(".") and kind_of(n) and (Path(root) / n).is_file()]
    return files


def plan_file(path: Path, unit_bytes: int) -> list[tuple[int, int]]:
    """(start, stop) pairs, one a unit, whose meaning is the reader's (byte range, row groups...)."""
    return _reader(path).plan(path, file_kind(path), unit_bytes)


def read_unit(path: str, start: int, stop: int, keys: list[str], rejects, batch_bytes: int):
    """Batches (records, first_index) of the unit: records are dicts holding at least `keys`."""
    return _reader(path).read(Path(path), file_kind(path), start, stop, keys, rejects, batch_bytes)
