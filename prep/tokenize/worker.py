"""A tokenize worker: read one unit's records, apply the recipe, write its parts and done-record.

Workers write their own parts to disk, so nothing but small done-records crosses process
boundaries. Output bytes depend on the plan order only, never on which worker ran a unit.
"""

from __future__ import annotations

import os
from pathlib import Path

from prep import recipes, sources
from prep.errors import BadRecord, Rejects
from prep.pipeline import faults, workdir as wd
from prep.pipeline.units import Unit
from prep.pipeline.workdir import write_done
from prep.tokenize.tokenizer import Encoder
from prep.writers import megatron

BATCH_BYTES = 4 << 20
SAMPLE_BYTES = 128 << 10

_STATE: dict = {}  # the job, the loaded encoder and recipe; forked workers inherit it


def load_state(job: dict, encoder: Encoder, tokenizer_json: str):
    """Set this process's state (before workers fork from it, so they inherit the encoder).
    Returns the recipe instance (a template that can't be used fails here, before any unit)."""
    recipe = recipes.of_job(job)(job, tokenizer_json)
    _STATE.clear()
    _STATE.update(job, encoder=encoder, recipe_state=recipe, tokenizer_json=tokenizer_json, encoder_backend=encoder.backend)
    return recipe


def open_worker(job: dict, slot, child: bool) -> "Worker":
    """The executor's factory. A forked child has the state already; a spawned one loads it."""
    if child:
        # One process per core: each backend single-threaded, as nested thread pools don't scale.
        os.environ["RAYON_NUM_THREADS"] = "1"
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        if not _STATE:
            tokenizer_json = job["tokenizer_json"]
            load_state(job, Encoder(tokenizer_json, job["encoder_backend"], job["split_special_tokens"]), tokenizer_json)
    return Worker()


class Worker:
    def run(self, units, report) -> None:
        workdir = _STATE["workdir"]
        for unit in units:
            wd.claim_unit(workdir, unit)  # prep status: in progress
            record = run_unit(unit)
            wd.release_unit(workdir, unit)
            report("done", record)

    def close(self) -> None:
        pass


def run_unit(unit: Unit) -> dict:
    """Read, tokenize and write one unit's parts, then its done-record. Returns the record."""
    s = _STATE
    faults.kill_worker_at_unit(unit.index)
    workdir, keys, encoder, recipe = Path(s["workdir"]), s["keys"], s["encoder"], s["recipe_state"]
    rejects = Rejects(s["skip_invalid"])
    writers = {key: megatron.PartWriter(workdir / "parts", unit, key, s["dtypes"].get(key, s["dtype"])) for key in keys}
    records_in = 0
    counts = {"truncated": 0, "dropped_overlong": 0}
    try:
        recipe.open_unit(workdir / "parts", unit)
        for records, locate in sources.read_unit(unit.path, *unit.byte_range, recipe.source_keys(), rejects, BATCH_BYTES):
            records_in += recipe.encode_batch(records, locate, unit.path, rejects, writers, encoder, counts)
        parts = {key: writer.commit() for key, writer in writers.items()}
        extra = recipe.close_unit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        recipe.abort_unit()
        raise
    record = {"unit": unit.to_json(), "fingerprint": s["fingerprint"], "parts": megatron.PARTS_FORMAT,
              "backend": encoder.backend, "records": records_in,
              "bytes": unit.size, "keys": parts, "skipped": rejects.counts, "examples": rejects.examples, **counts, **extra}
    write_done(workdir, unit, record)
    return record


def first_record(inputs: list[str]) -> dict | None:
    """The corpus's first record (a user's recipe callable is asked what it makes of it)."""
    for path in sources.expand_inputs(inputs):
        ranges = sources.plan_file(path, 1 << 40)
        if not ranges:
            continue
        try:
            for records, _ in sources.read_unit(str(path), *ranges[0], None, Rejects(skip=True), SAMPLE_BYTES):
                if records:
                    return records[0]
        except BadRecord:
            continue
    return None


def sample_texts(units: list[Unit], keys: list[str]) -> list[str]:
    """Texts from the start of the corpus, for the tokenizer backend's exactness probe."""
    if not units:
        return []
    try:
        records, _ = next(iter(sources.read_unit(units[0].path, *units[0].byte_range, keys, Rejects(skip=True), SAMPLE_BYTES)))
    except (BadRecord, StopIteration):
        return []
    texts = []
    for record in records:
        for key in keys:
            value = record.get(key)
            texts.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return texts
