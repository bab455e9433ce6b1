"""The tokenize stage: plan, run units (a process pool), finalize; progress and summary.

Workers write their own parts to disk, so nothing but small done-records crosses process
boundaries. Output bytes depend on the plan order only, never on which worker ran a unit.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from loaders.formats import indexed, nanogpt
from loaders.manifest import MANIFEST_NAME, ManifestError, load as load_manifest
from prep import manifest as manifest_mod
from prep import sources
from prep.config import TokenizeConfig, tokenize_fingerprint
from prep.errors import BadRecord, PrepError, Rejects
from prep.pack import plan_packs
from prep.plan import (WORKDIR, claim_output, clear_workdir, die_with_parent, Unit, done_path, load_done, make_plan, stop_pool, units_of,
                       write_json_atomic)
from prep.recipes.chat import BadConversation
from prep.recipes.sft import SFTOptions, SFTRecipe
from prep.recipes.text import assemble, texts_of
from prep.tokenizer import (BackendMismatch, Encoder, ReferenceIds, load_encoder, load_spec, probe_mismatch,
                            probe_texts)
from prep.writers import megatron
from prep.writers import nanogpt as nanogpt_writer

BATCH_BYTES = 4 << 20
SAMPLE_BYTES = 128 << 10

_STATE: dict = {}  # the job and the loaded encoder; forked workers inherit it


def _init_worker(state: dict | None) -> None:
    # Ctrl-C is the main process's to handle (it stops the workers); a worker dies with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    # One process per core: each backend single-threaded, as nested thread pools don't scale.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if state is not None:  # spawned, not forked: load what a fork would have inherited
        _STATE.update(state, encoder=Encoder(state["tokenizer_json"], state["encoder_backend"], state["split_special_tokens"]),
                      **_recipe_state(state, state["tokenizer_json"]))


def run_unit(unit: Unit) -> dict:
    """Read, tokenize and write one unit's parts, then its done-record. Returns the record."""
    s = _STATE
    if os.environ.get("PREP_TEST_KILL_WORKER_AT_UNIT") == str(unit.index):  # test hook: the OOM killer
        os.kill(os.getpid(), signal.SIGKILL)
    workdir, keys, dtype, encoder = Path(s["workdir"]), s["keys"], np.dtype(s["dtype"]), s["encoder"]
    rejects = Rejects(s["skip_invalid"])
    writers = {key: megatron.PartWriter(workdir / "parts", unit, key, s["dtypes"].get(key, dtype)) for key in keys}
    records_in = 0
    overlong = {"truncated": 0, "dropped_overlong": 0}
    try:
        for records, locate in sources.read_unit(unit.path, unit.start, unit.stop, s["source_keys"], rejects, BATCH_BYTES):
            if s["recipe"] != "text":
                records_in += _sft_batch(records, locate, unit.path, rejects, writers, overlong)
                continue
            texts = _texts(records, keys, locate, unit.path, rejects)
            records_in += len(texts[keys[0]][2])
            for key, (sentences, owner, kept) in texts.items():
                ids, offsets = encoder.encode(sentences)
                docs = assemble(ids, offsets, np.asarray(owner, np.int64), len(kept), s["eod_id"], s["bos_id"], dtype)
                writers[key].write(docs.tokens, docs.sequence_lengths, docs.document_sequences)
        counts = {key: writer.commit() for key, writer in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    record = {"unit": asdict(unit), "fingerprint": s["fingerprint"], "parts": megatron.PARTS_FORMAT,
              "backend": encoder.backend, "records": records_in,
              "bytes": unit.stop - unit.start, "keys": counts, "skipped": rejects.counts, "examples": rejects.examples, **overlong}
    write_json_atomic(done_path(workdir, unit), record)
    return record


def _sft_batch(records: list[dict], locate, path: str, rejects: Rejects, writers: dict, overlong: dict) -> int:
    """Render, tokenize and mask one batch of SFT records; returns how many were written."""
    s = _STATE
    recipe, options = s["sft"], s["sft"].options
    rendered, where = [], []
    for j, record in enumerate(records):
        try:
            rendered.append(recipe.render(record))
            where.append(j)
        except BadConversation as exc:
            rejects.add(path, lambda j=j: locate(j), str(exc))
    ids, offsets = s["encoder"].encode([text for text, _ in rendered])
    tokens, masks, lengths = [], [], []
    for k, (text, spans) in enumerate(rendered):
        sample = ids[offsets[k]:offsets[k + 1]]
        mask = recipe.mask(text, spans, sample)
        if s["bos_id"] is not None:
            sample, mask = np.concatenate([[s["bos_id"]], sample]), np.concatenate([[0], mask]).astype(np.uint8)
        if s["eod_id"] is not None:
            sample, mask = np.concatenate([sample, [s["eod_id"]]]), np.concatenate([mask, [1]]).astype(np.uint8)
        reason = "loss mask is all zeros (nothing to train on)" if not mask.any() else \
            "loss mask is all ones (no prompt: check the template or --columns)" if mask.all() else None
        if reason:
            rejects.add(path, lambda j=where[k]: locate(j), reason)
            continue
        if options.max_length and len(sample) > options.max_length:
            if options.overlong == "drop" or not mask[:options.max_length].any():
                overlong["dropped_overlong"] += 1
                continue
            sample, mask = sample[:options.max_length], mask[:options.max_length]
            overlong["truncated"] += 1
        tokens.append(sample)
        masks.append(mask)
        lengths.append(len(sample))
    if tokens:
        lengths = np.array(lengths, np.int32)
        ones = np.ones(len(lengths), np.int32)
        writers["tokens"].write(np.concatenate(tokens), lengths, ones)
        writers["loss_mask"].write(np.concatenate(masks), lengths, ones)
    return len(tokens)


def _texts(records: list[dict], keys: list[str], locate, path: str, rejects: Rejects) -> dict:
    """texts_of for every key. A record bad under one key is rejected from all, so the
    datasets of several keys keep the same documents."""
    bad: dict[int, str] = {}
    texts = {key: texts_of(records, key, lambda j, reason: bad.setdefault(j, reason)) for key in keys}
    if not bad:
        return texts
    for j in sorted(bad):
        rejects.add(path, lambda j=j: locate(j), bad[j])
    records = [r for j, r in enumerate(records) if j not in bad]
    return {key: texts_of(records, key, reject=None) for key in keys}


def _recipe_state(job: dict, tokenizer_json: str) -> dict:
    """What a worker needs besides the encoder: the SFT recipe (its template compiled once) and
    the record keys to read."""
    if job["recipe"] == "text":
        return {"sft": None, "source_keys": job["keys"]}
    c = job["config"]
    options = SFTOptions.from_config(c)
    sft = SFTRecipe(options, tokenizer_json, job["chat_template"], job["special_tokens_map"], job["eod_id"], job["bos_id"])
    return {"sft": sft, "source_keys": list(c["columns"].values()) if c["columns"] else None}  # chat: every column


def _sample_texts(units: list[Unit], keys: list[str]) -> list[str]:
    """Texts from the start of the corpus, for the tokenizer backend's exactness probe."""
    if not units:
        return []
    try:
        records, _ = next(iter(sources.read_unit(units[0].path, units[0].start, units[0].stop, keys, Rejects(skip=True), SAMPLE_BYTES)))
    except (BadRecord, StopIteration):
        return []
    texts = []
    for record in records:
        for key in keys:
            value = record.get(key)
            texts.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return texts


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier run wrote here (for --overwrite), and nothing else."""
    try:
        old = load_manifest(out)
        for dataset in old["datasets"].values():
            for shard in dataset["shards"]:  # Megatron: bin + idx; NanoGPT: bin (+ bos_idx)
                for entry in (shard.get("bin"), shard.get("idx"), shard.get("bos_idx")):
                    if entry:
                        (out / entry["path"]).unlink(missing_ok=True)
    except (ManifestError, KeyError, json.JSONDecodeError):
        pass
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    clear_workdir(out)


def prepare(config: TokenizeConfig, overwrite: bool, log, alone: bool = False) -> dict:
    """Resolve the tokenizer, check fingerprints, write or check the plan. Returns the job state."""
    out = Path(config.output)
    spec = load_spec(config.tokenizer, config.eod_token, config.bos_token)
    nanogpt_format = config.format == "nanogpt"
    sft = config.recipe != "text"
    if sft and nanogpt_format:
        raise PrepError(f"--recipe {config.recipe} writes Megatron datasets (tokens + loss_mask); --format nanogpt is for --recipe text")
    template = Path(config.chat_template).read_text() if config.chat_template else spec.chat_template
    if (config.recipe == "chat" or config.use_chat_template) and not template:
        raise PrepError(f"{config.tokenizer}: the tokenizer has no chat template; pass --chat-template FILE.jinja")
    if config.bos is None:  # NanoGPT data starts every document with BOS; Megatron's does not
        config.bos = nanogpt_format and spec.bos_id is not None
    if config.eod is None:  # Megatron's --append-eod; NanoGPT's BOS delimits documents; chat templates end turns
        config.eod = not nanogpt_format and not (config.recipe == "chat" or config.use_chat_template)
    if sft:
        config.keys = ["tokens", "loss_mask"]
    if not sft:
        for flag, value in (("--pack", config.pack), ("--max-length", config.max_length)):
            if value:  # pretraining documents are whole; the GPT loaders cut them into sequences
                raise PrepError(f"{flag} is for the SFT recipes (chat, instruction, completion)")
    if nanogpt_format and config.shard_tokens and config.shard_tokens > nanogpt.MAX_TOKENS:
        raise PrepError(f"--shard-tokens {config.shard_tokens:,}: a NanoGPT shard holds at most 2^31-1 "
                        f"({nanogpt.MAX_TOKENS:,}) tokens (its header counts them in int32)")
    if config.pack:
        if config.max_length is None or config.max_length > config.pack:
            config.max_length = config.pack  # a sample longer than a pack could not be placed
    if config.eod and spec.eod_id is None:
        raise PrepError(f"{config.tokenizer}: the tokenizer has no EOS token to use as EOD; pass --eod-token TOKEN or --no-eod")
    if config.bos and spec.bos_id is None:
        raise PrepError(f"{config.tokenizer}: the tokenizer has no BOS token; pass --bos-token TOKEN or drop --bos")
    try:
        dtype = nanogpt.token_dtype(spec.vocab_size, config.nanogpt_header == "legacy") if nanogpt_format else indexed.optimal_dtype(spec.vocab_size)
    except ValueError as exc:
        raise PrepError(f"--nanogpt-header legacy: {exc}") from None
    fp = tokenize_fingerprint(config, spec.sha256, spec.eod_id if config.eod else None, spec.bos_id if config.bos else None,
                              dtype.name, template if sft else None)
    workdir = out / WORKDIR
    state_file = workdir / "job.json"
    claim_output(out, fp, overwrite, _clear_outputs, "output made with another configuration", log, alone)
    if (out / MANIFEST_NAME).exists():
        return {"complete": True, "out": str(out)}

    plan = make_plan(config.inputs, config.unit_bytes)
    (workdir / "parts").mkdir(parents=True, exist_ok=True)
    (workdir / "done").mkdir(exist_ok=True)
    plan_file = workdir / "plan.json"
    if plan_file.exists():
        saved = json.loads(plan_file.read_text())
        if config.unit_bytes is None:  # keep the unit size the run started with
            plan = make_plan(config.inputs, saved["unit_bytes"])
        if saved != plan:
            raise PrepError(f"{out}: the inputs changed since this output was started, or --unit-size did (files, sizes, modification times or units differ); "
                            "restore them, or pass --overwrite to start again")
    else:
        write_json_atomic(plan_file, plan)
    job = {
        "complete": False, "out": str(out), "workdir": str(workdir), "fingerprint": fp,
        "config": config.to_dict(), "tokenizer": {**spec.manifest(), "dtype": dtype.name},
        "keys": config.keys, "dtype": dtype.name, "eod_id": spec.eod_id if config.eod else None,
        "bos_id": spec.bos_id if config.bos else None, "split_special_tokens": config.split_special_tokens,
        "skip_invalid": config.skip_invalid, "backend": config.backend, "format": config.format, "recipe": config.recipe,
        "dtypes": {"loss_mask": "uint8"} if sft else {}, "chat_template": template if sft else None,
        "special_tokens_map": spec.special_tokens_map,
    }
    write_json_atomic(state_file, {k: v for k, v in job.items() if k != "complete"})
    tmp = workdir / f".tokenizer.json.tmp.{os.getpid()}"
    tmp.write_text(spec.json)
    os.replace(tmp, workdir / "tokenizer.json")
    return job


def run_units(job: dict, units: list[Unit], workers: int, progress: bool, log, merge: bool = False) -> dict:
    """Run the units not yet done; returns this run's totals. With `merge` (a whole job, one
    unsharded, unpacked Megatron dataset per key) the final `.bin` files are assembled while
    units run; `totals["merged"]` then hands them to finalize."""
    workdir = Path(job["workdir"])
    for stale in [*(workdir / "parts").glob("*.tmp.*"), *Path(job["out"]).glob(".*.tmp.*")]:
        stale.unlink(missing_ok=True)
    c = job["config"]
    merger = None
    if merge and job["format"] == "megatron" and not c["shard_tokens"] and not c.get("pack"):
        merger = megatron.StreamingMerge(workdir, Path(job["out"]), units, job["keys"])
    try:
        totals = _run_units(job, units, workers, progress, log, merger)
    except BaseException:
        if merger is not None:
            merger.abort()
        raise
    if merger is not None:
        totals["merged"] = merger.finish()
    return totals


def _run_units(job: dict, units: list[Unit], workers: int, progress: bool, log, merger) -> dict:
    workdir = Path(job["workdir"])
    pending = [u for u in units if load_done(workdir, u, job["fingerprint"], megatron.PARTS_FORMAT) is None]
    totals = {"units": len(pending), "skipped_units": len(units) - len(pending), "bytes": 0, "records": 0, "tokens": 0}
    if merger is not None:
        merger.restart({u.index for u in units} - {u.index for u in pending})
    if not pending:
        return totals
    tokenizer_json = (workdir / "tokenizer.json").read_text()
    # The same sample every run (the plan's first unit), so a resumed run re-checks the same thing.
    plan_units = units_of(json.loads((workdir / "plan.json").read_text()))
    sample = _sample_texts(plan_units, job["keys"])
    reference = None
    if job["backend"] != "hf":  # HF's ids for the probe, computed while the fast backend loads
        reference = ReferenceIds(tokenizer_json, job["split_special_tokens"], probe_texts(tokenizer_json, sample))
    encoder, note = load_encoder(tokenizer_json, job["backend"], job["split_special_tokens"])
    workers = max(1, min(workers, len(pending)))
    # on stdout with the summary: stderr keeps to warnings and, on bad input, the one error line
    print(f"tokenizer: {note}; dtype {job['dtype']}; {workers} worker(s)", flush=True)
    if encoder.backend == "hf" and reference is not None:
        reference.close()
    probe = None if encoder.backend == "hf" else (lambda: probe_mismatch(encoder, sample, reference))
    try:
        note = _run_pool(job, pending, workers, progress, totals, encoder, probe, tokenizer_json, merger) or note
    except BackendMismatch as exc:
        if job["backend"] == "fastokens":
            raise PrepError(str(exc)) from None
        log(f"warning: {exc}; falling back to HF tokenizers (slow)")
        note = f"HF tokenizers (slow; {exc})"
        for unit in plan_units:  # nothing the untrusted backend wrote is kept
            record = load_done(workdir, unit, job["fingerprint"], megatron.PARTS_FORMAT)
            if record and record.get("backend") == "fastokens":
                done_path(workdir, unit).unlink()
        pending = [u for u in units if load_done(workdir, u, job["fingerprint"], megatron.PARTS_FORMAT) is None]
        totals.update(units=len(pending), skipped_units=len(units) - len(pending), bytes=0, records=0, tokens=0)
        encoder = Encoder(tokenizer_json, "hf", job["split_special_tokens"])
        if merger is not None:  # what it merged came from the untrusted backend too
            merger.abort()
            merger.restart({u.index for u in units} - {u.index for u in pending})
        _run_pool(job, pending, workers, progress, totals, encoder, None, tokenizer_json, merger)
    job["tokenizer"]["backend"] = note
    write_json_atomic(workdir / "job.json", {k: v for k, v in job.items() if k != "complete"})
    return totals


def _run_pool(job, pending, workers, progress, totals, encoder, probe, tokenizer_json, merger=None) -> str | None:
    """Run `pending` on `workers` processes. `probe()` (the fast backend's exactness check) runs
    in this process while the workers start; on a difference it stops them and raises
    BackendMismatch. Returns the backend note when a probe ran."""
    bar = tqdm(total=sum(u.stop - u.start for u in pending), unit="B", unit_scale=True, unit_divisor=1024,
               desc="tokenize", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def account(record: dict) -> None:
        totals["bytes"] += record["bytes"]
        totals["records"] += record["records"]
        totals["tokens"] += sum(k["tokens"] for k in record["keys"].values())
        bar.update(record["bytes"])
        if merger is not None:
            merger.unit_done(record["unit"]["index"])

    def check() -> str | None:
        if probe is None:
            return None
        mismatch, count = probe()
        if mismatch:
            raise BackendMismatch(mismatch)
        return f"{encoder.backend} (ids equal to HF tokenizers on {count} probe texts)"

    _STATE.clear()
    _STATE.update(job, encoder=encoder, **_recipe_state(job, tokenizer_json))
    try:
        if workers == 1:
            note = check()
            for unit in pending:
                account(run_unit(unit))
            return note
        # Fork where we can: workers inherit the loaded tokenizer (loading one can take seconds).
        forked = "fork" in mp.get_all_start_methods()
        context = mp.get_context("fork" if forked else "spawn")
        state = None if forked else {**job, "tokenizer_json": tokenizer_json, "encoder_backend": encoder.backend}
        # An executor, not mp.Pool: a worker killed mid-unit (the OOM killer, kill -9) breaks it
        # and the run stops, where a Pool would replace the worker and wait forever for its unit.
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(state,))
        try:
            futures = [pool.submit(run_unit, unit) for unit in pending]
            note = check()
            for future in as_completed(futures):
                account(future.result())
        except BaseException as exc:  # a dead worker, a bad record, a backend mismatch, Ctrl-C: the others stop now
            stop_pool(pool)
            if isinstance(exc, BrokenProcessPool):
                raise PrepError("a worker process died (killed, or out of memory?); the units finished so far are kept: "
                                "rerun the same command to resume (with fewer --workers if memory is short)") from None
            raise
        pool.shutdown()
        return note
    finally:
        bar.close()


def all_done(job: dict) -> tuple[list[dict], list[Unit]]:
    """(done-records, units still missing) over the whole plan."""
    workdir = Path(job["workdir"])
    units = units_of(json.loads((workdir / "plan.json").read_text()))
    records, missing = [], []
    for unit in units:
        record = load_done(workdir, unit, job["fingerprint"], megatron.PARTS_FORMAT)
        (records.append(record) if record else missing.append(unit))
    return records, missing


def finalize(job: dict, timings: dict, merged: dict | None = None) -> dict:
    """Merge every unit's parts into shards and write the manifest, last. Returns the manifest."""
    out, workdir = Path(job["out"]), Path(job["workdir"])
    records, missing = all_done(job)
    if missing:
        raise PrepError(f"{out}: {len(missing)} of {len(records) + len(missing)} units are not done yet "
                        f"(first: {missing[0].path} [{missing[0].start}:{missing[0].stop}]); run the remaining tasks first")
    empty = [key for key in job["keys"] if not any(r["keys"][key]["tokens"] for r in records)]
    if empty:  # Megatron-Core can't map an empty .bin: a dataset without tokens is no dataset
        skipped = sum(sum(r["skipped"].values()) for r in records)
        raise PrepError(f"{out}: no tokens under {', '.join(map(repr, empty))} in {sum(r['records'] for r in records):,} record(s)"
                        f"{f' ({skipped:,} skipped as bad)' if skipped else ''}; nothing to write: check the inputs and --text-key")
    units = [Unit(**r["unit"]) for r in records]
    shard_tokens = job["config"]["shard_tokens"]
    if job["format"] == "nanogpt":
        legacy = job["config"]["nanogpt_header"] == "legacy"
        datasets = {key: nanogpt_writer.finalize_key(workdir, out, units, key, job["dtype"], shard_tokens, job["bos_id"], legacy) for key in job["keys"]}
    else:
        packs = None
        if job["config"].get("pack"):
            lengths = megatron.part_lengths(workdir, units, job["keys"][0])
            packs = plan_packs(lengths, job["config"]["pack"], job["config"]["pack_window"], job["config"]["seed"])
        datasets = {key: megatron.finalize_key(workdir, out, units, key, job["dtypes"].get(key, job["dtype"]), shard_tokens, packs,
                                               (merged or {}).get(key))
                    for key in job["keys"]}
        if packs is not None:
            first = datasets[job["keys"][0]]
            first["packing"] = {"capacity": job["config"]["pack"], "packs": first["documents"], "samples": first["sequences"],
                                "efficiency": round(first["tokens"] / max(1, first["documents"] * job["config"]["pack"]), 6)}
    if os.environ.get("PREP_TEST_CRASH_IN_FINALIZE"):
        os._exit(70)  # test hook: a crash after the shards, before the manifest
    plan = json.loads((workdir / "plan.json").read_text())
    per_input: dict[str, int] = {}
    skipped: dict[str, int] = {}
    examples: list[str] = []
    for r in records:
        per_input[r["unit"]["path"]] = per_input.get(r["unit"]["path"], 0) + r["records"]
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
        examples.extend(r["examples"][: max(0, 10 - len(examples))])
    first = datasets[job["keys"][0]]
    stats = {
        "documents": first["documents"], "tokens": sum(d["tokens"] for d in datasets.values()),
        "empty_documents": sum(r["keys"][job["keys"][0]]["empty_documents"] for r in records),
        "skipped": skipped, "skipped_total": sum(skipped.values()), "skipped_examples": examples,
        "truncated": sum(r.get("truncated", 0) for r in records),
        "dropped_overlong": sum(r.get("dropped_overlong", 0) for r in records),
        "length_histogram": first.get("length_histogram"),
        **({"packing": first["packing"]} if "packing" in first else {}),
    }
    inputs = [{"path": f["path"], "bytes": f["bytes"], "records": per_input.get(f["path"], 0)} for f in plan["inputs"]]
    manifest = manifest_mod.build("tokens", job["format"], job["fingerprint"], job["config"], job["tokenizer"],
                                  inputs, datasets, stats, timings)
    manifest["config"]["recipe"] = job["recipe"]
    manifest_mod.write(out, manifest)
    shutil.rmtree(workdir, ignore_errors=True)
    return manifest
