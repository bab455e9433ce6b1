"""The latents stage: plan (media -> items -> units), run units on encoder processes, finalize.

- plan: sorted media files with their captions; a unit is `unit_items` consecutive items.
- run: CPU worker processes decode items (in order, a window ahead, across unit boundaries) while
  one encoder process per device encodes batches of one bucket. Batches are formed from the
  unit's item order alone, so their composition never depends on timing. Each batch's files are
  written under temporary names and renamed, then the batch is appended to the unit's journal
  (fsync), the batch's commit point: a resumed unit skips journaled batches, so no committed
  item is encoded again (a batch killed between its file renames and its journal line is run
  again whole, rewriting the same files), and the batches it still runs are the ones an
  uninterrupted run would have run. A finished unit gets a
  done-record. Units go to encoder processes from a shared queue (work stealing); a Slurm
  array task takes its round-robin slice of the units.
- finalize: the metadata shards and metadata.json in AutoModel's layout (items in plan order,
  absolute paths), then manifest.json, last.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import queue
import re
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import xxhash

from loaders.formats import latents as fmt
from loaders.manifest import MANIFEST_NAME, ManifestError, load as load_manifest
from prep import __version__
from prep import manifest as manifest_mod
from prep.errors import BadRecord, PrepError
from prep.latents import buckets, media
from prep.plan import (WORKDIR, Unit, claim_output, clear_workdir, done_path, fsync_dir, load_done, stop_pool,
                       write_json_atomic)

DEFAULT_UNIT_ITEMS = 64
WEIGHT_HASH = "xxh3_128"


@dataclass
class LatentsConfig:
    inputs: list[str]
    output: str
    family: str
    model: str | None = None
    vae: str | None = None
    text_encoders: list[str] = field(default_factory=list)
    preset: str | None = "512p"
    max_pixels: int | None = None
    frames: int = 33
    device: str = "cpu"
    precision: str | None = None  # bf16 on CUDA, fp32 on CPU
    deterministic: bool | None = None  # the family's default: FLUX samples, Wan/HunyuanVideo take the mean
    seed: int = 0
    batch_size: int | None = None
    unit_items: int | None = None
    decode_workers: int | None = None
    captions: str | None = None
    file_column: str = "file_name"
    caption_column: str | None = None
    caption_fallback: str = "none"  # none | filename (AutoModel's: the file stem, _ as spaces)
    skip_invalid: bool = False
    allow_empty_captions: bool = False
    vae_tiling: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- fingerprint


def hash_folder(folder: Path) -> str:
    """xxh3-128 over every file of a component folder (names and bytes, sorted): weights, config,
    tokenizer files. Reads 16 MiB at a time."""
    digest = xxhash.xxh3_128()
    files = (p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in sorted(files):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def encoder_identity(components) -> dict:
    return {role: {"path": str(path.resolve()), WEIGHT_HASH: hash_folder(path)} for role, path in components.files()}


def fingerprint_of(settings: dict) -> str:
    """sha256 of what decides the cache's bytes (weights, dtype, buckets, crop, frames, version)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _settings(config: LatentsConfig, family, encoders: dict, table: list[buckets.Bucket], quantization: int) -> dict:
    from prep.latents.families import VAE_TILING

    return {
        "family": config.family, "encoders": {role: e[WEIGHT_HASH] for role, e in encoders.items()},
        "precision": config.precision, "device_type": config.device.split(":")[0].split(",")[0],
        "latent": "posterior mean" if config.deterministic else f"posterior sample, seed {config.seed} per item",
        "buckets": buckets.describe(table), "quantization": quantization,
        "resize": "bilinear per frame" if family.video else "lanczos", "crop": "cover, centre", "alpha": "over white",
        "frames": {"count": config.frames, "sampling": "linspace(0, total - 1, n).astype(int), n for every video (short ones repeat frames)",
                   "four_n_plus_one": family.four_n_plus_one} if family.video else None,
        "tool": {"name": "prep", "version": __version__},
        **({"vae_tiling": VAE_TILING} if config.vae_tiling else {}),  # only when on: older caches keep their fingerprint
        **({"empty_captions": "kept"} if config.allow_empty_captions else {}),  # which items the cache holds
    }


# ----------------------------------------------------------------------------------- plan


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier latents run wrote here (for --overwrite), and nothing else."""
    for path in list(out.glob("metadata_shard_*.json")) + [out / fmt.METADATA, out / MANIFEST_NAME]:
        path.unlink(missing_ok=True)
    for folder in out.iterdir() if out.exists() else []:
        if folder.is_dir() and "x" in folder.name and folder.name.replace("x", "").isdigit():
            shutil.rmtree(folder, ignore_errors=True)
    clear_workdir(out)


def prepare(config: LatentsConfig, overwrite: bool, log, alone: bool = False) -> dict:
    """Resolve models, captions and buckets; check fingerprints; write or check the plan."""
    from prep.latents.families import family_class, resolve_components

    family = family_class(config.family)
    devices_for(config.device)  # a device that can't run stops here, before any state is written
    if config.vae_tiling and not family.tiling:
        raise PrepError(f"--vae-tiling: not offered for --family {config.family} (only hunyuan15)")
    cuda = config.device.startswith("cuda")
    config.precision = config.precision or ("bf16" if cuda else "fp32")
    if config.deterministic is None:
        config.deterministic = family.default_deterministic
    config.batch_size = config.batch_size or (1 if family.video else 8)
    config.unit_items = config.unit_items or DEFAULT_UNIT_ITEMS
    if family.video and config.frames < 1:
        raise PrepError(f"--frames {config.frames}: must be at least 1")
    try:
        max_pixels = buckets.max_pixels_of(config.preset, config.max_pixels)
    except ValueError as exc:
        raise PrepError(f"--preset: {exc}") from None
    quantization = fmt.VIDEO_QUANTIZATION if family.video else fmt.IMAGE_QUANTIZATION
    table = buckets.bucket_table(max_pixels, quantization)
    if not table:
        raise PrepError(f"--max-pixels {max_pixels}: no bucket fits (the smallest side is {quantization})")
    components = resolve_components(config.family, config.model, config.vae, config.text_encoders)
    out = Path(config.output).absolute()
    config.output = str(out)

    files = media.list_media(config.inputs, family.video)
    captions = media.find_captions(files, config.captions, config.file_column, config.caption_column)
    items = []
    for path in files:
        caption = captions.get(str(path))
        if caption is None and config.caption_fallback == "filename":
            caption = path.stem.replace("_", " ")
        if caption is None and not config.skip_invalid:
            raise BadRecord(str(path), None, "no caption (add a sidecar .txt or a captions.jsonl with file_name/text, "
                                            "or pass --caption-fallback filename or --skip-invalid)")
        if caption is not None and not caption.strip() and not (config.allow_empty_captions or config.skip_invalid):
            raise BadRecord(str(path), None, "empty caption (pass --allow-empty-captions to keep such items, "
                                            "e.g. for unconditional training, or --skip-invalid)")
        items.append({"path": str(path), "bytes": path.stat().st_size, "caption": caption})

    encoders = encoder_identity(components)
    settings = _settings(config, family, encoders, table, quantization)
    fp = fingerprint_of(settings)
    workdir = out / WORKDIR
    state_file = workdir / "job.json"
    claim_output(out, fp, overwrite, _clear_outputs, "a latent cache made with other weights or settings", log, alone)
    inputs_digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    if (out / MANIFEST_NAME).exists():
        made_from = load_manifest(out)["datasets"]["latents"].get("inputs_sha256")
        if made_from is not None and made_from != inputs_digest:
            raise PrepError(f"{out}: the inputs or captions changed since this cache was made (files added, removed, "
                            "resized or recaptioned); pass --overwrite to make it again")
        return {"complete": True, "out": str(out)}

    step = config.unit_items
    plan = {"items": items, "unit_items": step,
            "units": [asdict(Unit(i, items[start]["path"], start, min(start + step, len(items))))
                      for i, start in enumerate(range(0, len(items), step))]}
    for sub in ("done", "journal"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    plan_file = workdir / "plan.json"
    if plan_file.exists():
        if json.loads(plan_file.read_text()) != plan:
            raise PrepError(f"{out}: the inputs or captions changed since this cache was started; "
                            "restore them, or pass --overwrite to start again")
    else:
        write_json_atomic(plan_file, plan)
    job = {"complete": False, "kind": "latents", "out": str(out), "workdir": str(workdir), "fingerprint": fp,
           "inputs_sha256": inputs_digest,
           "config": config.to_dict(), "settings": settings, "encoders": encoders, "max_pixels": max_pixels,
           "quantization": quantization, "table": buckets.describe(table),
           "components": {"vae": str(components.vae), "text_encoders": [str(p) for p in components.text_encoders],
                          "tokenizers": [str(p) for p in components.tokenizers]}}
    write_json_atomic(state_file, {k: v for k, v in job.items() if k != "complete"})
    return job


def plan_units(job: dict) -> list[Unit]:
    return [Unit(**u) for u in json.loads((Path(job["workdir"]) / "plan.json").read_text())["units"]]


# ----------------------------------------------------------------------------------- run


def _read_journal(path: Path) -> dict[int, dict]:
    """Items of the unit's committed batches (a torn last line, from a kill, is ignored)."""
    done: dict[int, dict] = {}
    if path.exists():
        for line in path.read_bytes().split(b"\n"):
            try:
                for entry in json.loads(line)["items"]:
                    done[entry["index"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


class _UnitRun:
    """One unit in flight on an encoder: its journal, bucket accumulators and failures."""

    def __init__(self, unit: Unit, workdir: Path):
        self.unit = unit
        self.journal_path = workdir / "journal" / f"{unit.id}.jsonl"
        self.journaled = _read_journal(self.journal_path)
        self.pending: dict[tuple, list] = {}  # batch key -> [(index, decoded or None)], insertion-ordered
        self.failures: list[tuple[int, str]] = []
        self.encode_s = 0.0


class Encoder:
    """One device: the family's models (loaded once), a decode pool, and the unit loop."""

    def __init__(self, job: dict, device: str, report):
        from prep.latents.families import Components, family_class

        self.job, self.report = job, report
        c, cfg = job["components"], job["config"]
        self.cfg, self.out, self.workdir = cfg, Path(job["out"]), Path(job["workdir"])
        self.plan_items = json.loads((self.workdir / "plan.json").read_text())["items"]
        self.table = [buckets.Bucket(b["id"], *b["resolution"]) for b in job["table"]]
        self.family_cls = family_class(cfg["family"])
        self.workers = workers = cfg["decode_workers"] or max(1, _cpus() - 1)
        # Decoders fork before the models load: small children, no CUDA state in them.
        self.pool = _decoders(workers, "fork")
        self.window = max(2 * cfg["batch_size"], 2 * workers)
        self.family = self.family_cls(Components(Path(c["vae"]), [Path(p) for p in c["text_encoders"]], [Path(p) for p in c["tokenizers"]],
                                                 cfg["family"]),
                                      device, cfg["precision"], cfg["deterministic"], cfg.get("vae_tiling", False))
        self.device = self.family.device
        self.torch_threads = None
        if self.device.type == "cpu":  # torch's threads get the cores the decoders leave: oversubscribed, both crawl
            import torch

            self.torch_threads = torch.get_num_threads()
            torch.set_num_threads(max(1, _cpus() - workers))
        self.batches = 0
        self.crash_after = int(os.environ.get("PREP_TEST_CRASH_AFTER_BATCHES", "0"))
        # Files are serialised, written and journaled on a thread, in batch order, while the
        # device encodes the next batch; two batches of backlog at most bound the memory.
        self.writes: queue.Queue = queue.Queue(maxsize=2)
        self.write_error: BaseException | None = None
        self.writer = threading.Thread(target=self._writer, name="latents-writer", daemon=True)
        self.writer.start()

    def _writer(self) -> None:
        while (task := self.writes.get()) is not None:
            try:
                if self.write_error is None:
                    task()
            except BaseException as exc:  # re-raised on the encoder's thread
                self.write_error = exc
            finally:
                self.writes.task_done()
        self.writes.task_done()

    def _submit(self, task) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.writes.put(task)

    def drain(self) -> None:
        self.writes.join()
        if self.write_error is not None:
            raise self.write_error

    def close(self) -> None:
        self.writes.put(None)
        self.writer.join()
        stop_pool(self.pool)
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)

    def _work(self, units):
        """(run, index, decode task or None) per item, then (run, None, None) at each unit's end."""
        for unit in units:
            run = _UnitRun(unit, self.workdir)
            for index in range(unit.start, unit.stop):
                needed = index not in run.journaled and self.plan_items[index]["caption"] is not None
                yield run, index, self._task(index) if needed else None
            yield run, None, None

    def _task(self, index: int) -> tuple:
        item, family = self.plan_items[index], self.family_cls
        return index, item["path"], family.video, self.table, self.cfg["frames"], family.four_n_plus_one

    def _decode(self, task: tuple):
        try:
            return self.pool.submit(media.decode, task)
        except BrokenProcessPool:  # a decoder died: a new pool, spawned (the models are loaded: no fork now)
            stop_pool(self.pool)
            self.pool = _decoders(self.workers, "spawn")
            return self.pool.submit(media.decode, task)

    def _decoded(self, index: int, future) -> dict:
        """The decoded item. A decoder that died (a codec crash, the OOM killer) fails every item
        in flight; each is then decoded alone in a fresh process, which finds the one that kills
        it: that item is a bad item, the others go on."""
        try:
            return future.result()
        except BrokenProcessPool:
            alone = _decoders(1, "spawn")
            try:
                return alone.submit(media.decode, self._task(index)).result()
            except BrokenProcessPool:
                return {"index": index, "error": "decoder process died on it (a codec crash, or out of memory)"}
            finally:
                stop_pool(alone)

    def run(self, units) -> None:
        """Encode the units (an iterable; a shared queue's for work stealing), reporting done-records."""
        in_flight: collections.deque = collections.deque()
        for run, index, task in self._work(units):
            in_flight.append((run, index, self._decode(task) if task else None))
            while len(in_flight) > self.window:
                self._take(*in_flight.popleft())
        while in_flight:
            self._take(*in_flight.popleft())
        self.drain()

    def _take(self, run: _UnitRun, index: int | None, result) -> None:
        if index is None:
            for key in list(run.pending):
                self._flush(run, key)
            self._submit(lambda: self._finish(run))
            return
        item = self.plan_items[index]
        if index in run.journaled:
            key = tuple(run.journaled[index]["key"])
            decoded = None
        elif item["caption"] is None or not (item["caption"].strip() or self.cfg.get("allow_empty_captions")):
            self._fail(run, index, "no caption" if item["caption"] is None else "empty caption")
            return
        else:
            decoded = self._decoded(index, result)
            if "error" in decoded:
                self._fail(run, index, decoded["error"])
                return
            key = (decoded["bucket"], decoded["frames"])
        batch = run.pending.setdefault(key, [])
        batch.append((index, decoded))
        if len(batch) == self.cfg["batch_size"]:
            self._flush(run, key)

    def _fail(self, run: _UnitRun, index: int, reason: str) -> None:
        if not self.cfg["skip_invalid"]:
            raise BadRecord(self.plan_items[index]["path"], None, reason + "; pass --skip-invalid to record and skip such items")
        run.failures.append((index, reason))
        self.report("items", 1)

    def _flush(self, run: _UnitRun, key: tuple) -> None:
        batch = run.pending.pop(key)
        todo = [(i, d) for i, d in batch if d is not None]
        if not todo:  # committed before a kill
            return
        started = time.perf_counter()
        seeds = [self.cfg["seed"] * 1_000_003 + i for i, _ in todo]
        tensors = self.family.encode([d["pixels"] for _, d in todo], [self.plan_items[i]["caption"] for i, _ in todo], seeds)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        run.encode_s += time.perf_counter() - started
        self._submit(lambda: self._commit(run, todo, tensors, list(key)))

    def _commit(self, run: _UnitRun, todo: list, tensors: list[dict], key: list) -> None:
        """Write a batch's item files, then append it to the unit's journal (the commit point)."""
        entries = [self._write(i, d, t, key) for (i, d), t in zip(todo, tensors)]
        line = json.dumps({"items": entries}).encode() + b"\n"
        with open(run.journal_path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.report("items", len(todo))
        self.batches += 1
        if self.crash_after and self.batches >= self.crash_after:
            os._exit(70)  # test hook: a kill between batches

    def _write(self, index: int, decoded: dict, tensors: dict, key: list) -> dict:
        import torch

        from prep.latents.families import cache_dict

        item, bucket = self.plan_items[index], self.table[decoded["bucket"]]
        video = self.family_cls.video
        meta = {"path": item["path"], "prompt": item["caption"], "original_resolution": list(decoded["original"]),
                "bucket_resolution": [bucket.width, bucket.height], "bucket_id": bucket.id, "aspect_ratio": bucket.aspect_ratio,
                "crop_offset": list(decoded["crop_offset"]), "num_frames": decoded["frames"], "deterministic": self.cfg["deterministic"]}
        name = fmt.cache_name(item["path"], bucket.width, bucket.height, decoded["frames"] if video else None)
        relative = f"{fmt.bucket_dir(bucket.width, bucket.height)}/{name}"
        buffer = io.BytesIO()
        torch.save(cache_dict(self.family_cls, tensors, meta), buffer)
        data = buffer.getvalue()
        target = self.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.tmp.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        entry = {"index": index, "key": key, "cache_file": relative, "bytes": len(data), "xxh64": xxhash.xxh64_hexdigest(data),
                 ("video_path" if video else "image_path"): item["path"], "bucket_resolution": meta["bucket_resolution"],
                 "original_resolution": meta["original_resolution"], "prompt": item["caption"], "bucket_id": bucket.id,
                 "aspect_ratio": bucket.aspect_ratio, "pixels": bucket.width * bucket.height, "model_type": self.family_cls.model_type}
        if video:
            entry.update(num_frames=decoded["frames"], total_frames=decoded["total_frames"], frame_indices=decoded["frame_indices"])
        else:
            entry["crop_offset"] = meta["crop_offset"]
        return entry

    def _finish(self, run: _UnitRun) -> None:
        entries = sorted(_read_journal(run.journal_path).values(), key=lambda e: e["index"])
        reasons: dict[str, int] = {}
        for _, reason in run.failures:
            category = reason.split(" (")[0]
            reasons[category] = reasons.get(category, 0) + 1
        record = {"unit": asdict(run.unit), "fingerprint": self.job["fingerprint"], "items": entries,
                  "skipped": reasons, "examples": [f"{self.plan_items[i]['path']}: {r}" for i, r in run.failures[:5]],
                  "encode_s": run.encode_s}
        write_json_atomic(done_path(self.workdir, run.unit), record)
        run.journal_path.unlink(missing_ok=True)
        self.report("unit", record)


def _decoders(workers: int, start: str) -> ProcessPoolExecutor:
    context = mp.get_context(start if start in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=media.init_worker)


def _cpus() -> int:
    from prep.plan import default_workers

    return default_workers()


def _queue_units(queue):
    while (unit := queue.get()) is not None:
        yield Unit(**unit)


def _device_worker(job: dict, device: str, units, results) -> None:
    """Encoder process of one GPU: load the models once, take units from the shared queue."""
    encoder = None
    try:
        encoder = Encoder(job, device, lambda kind, value: results.put((kind, value)))
        encoder.run(_queue_units(units))
        results.put(("exit", os.getpid()))
    except BadRecord as exc:
        results.put(("error", exc.format_message()))
    except BaseException as exc:  # reported, then the parent stops the others
        results.put(("error", f"{device}: {type(exc).__name__}: {exc}"))
    finally:
        if encoder is not None:
            encoder.close()


def devices_for(device: str) -> list[str]:
    """`cuda` means every visible GPU (one encoder process each); `cuda:0,cuda:2` those; `cpu` or
    `cuda:N` one, run in this process. (`cpu,cpu` runs the multi-process path on a CPU machine.)"""
    import torch

    names = [d.strip() for d in device.split(",") if d.strip()] or [device]
    for name in names:
        try:
            kind = torch.device(name).type
        except (RuntimeError, ValueError):
            raise PrepError(f"--device {name}: not a device; use cpu, cuda, cuda:N or a comma-separated list") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise PrepError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if device == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def run_units(job: dict, units: list[Unit], progress: bool, log) -> dict:
    """Run the units not yet done; returns this run's totals (items, encoder busy time, wall)."""
    from tqdm import tqdm

    workdir = Path(job["workdir"])
    for stale in Path(job["out"]).glob("*x*/.*.tmp.*"):
        stale.unlink(missing_ok=True)
    pending = [u for u in units if load_done(workdir, u, job["fingerprint"]) is None]
    totals = {"units": len(pending), "skipped_units": len(units) - len(pending), "items": 0, "encode_s": 0.0, "wall_s": 0.0}
    if not pending:
        return totals
    devices = devices_for(job["config"]["device"])
    started = time.perf_counter()
    bar = tqdm(total=sum(u.stop - u.start for u in pending), unit="item", desc=f"latents {job['config']['family']}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def report(kind, value):
        if kind == "items":
            totals["items"] += value
            bar.update(value)
        elif kind == "unit":
            totals["encode_s"] += value["encode_s"]

    try:
        if len(devices) == 1:
            encoder = Encoder(job, devices[0], report)
            log(f"encoder: {job['config']['family']} on {devices[0]} ({job['config']['precision']}), "
                f"{encoder.workers} decode worker(s)")
            started = time.perf_counter()  # busy share over the encoding, not the model loading
            try:
                encoder.run(pending)
            finally:
                encoder.close()
        else:
            _run_processes(job, devices, pending, report, log)
    finally:
        bar.close()
    totals["wall_s"] = time.perf_counter() - started
    return totals


def _run_processes(job, devices, pending, report, log) -> None:
    context = mp.get_context("spawn")  # CUDA is not fork-safe
    units, results = context.Queue(), context.Queue()
    for unit in pending:
        units.put(asdict(unit))
    for _ in devices:
        units.put(None)
    log(f"encoder: {job['config']['family']} on {', '.join(devices)}: one process each, units shared by work stealing")
    procs = [context.Process(target=_device_worker, args=(job, d, units, results)) for d in devices]
    for p in procs:
        p.start()
    running = {p.pid: (d, p) for d, p in zip(devices, procs)}
    try:
        while running:
            try:
                kind, value = results.get(timeout=1.0)
            except queue.Empty:  # a process killed (OOM, a driver fault) says nothing: look for it
                dead = [(d, p.exitcode) for d, p in running.values() if p.exitcode is not None]
                if dead and results.empty():
                    device, code = dead[0]
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    raise PrepError(f"{device}: the encoder process died ({how}; out of memory?); the units finished "
                                    "so far are kept: rerun the same command to resume") from None
                continue
            if kind == "exit":
                running.pop(value)
            elif kind == "error":
                raise PrepError(value)
            else:
                report(kind, value)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


# ----------------------------------------------------------------------------------- finalize


def all_done(job: dict) -> tuple[list[dict], list[Unit]]:
    workdir = Path(job["workdir"])
    records, missing = [], []
    for unit in plan_units(job):
        record = load_done(workdir, unit, job["fingerprint"])
        (records.append(record) if record else missing.append(unit))
    return records, missing


def metadata_entry(entry: dict, root: Path) -> dict:
    """AutoModel's metadata entry (absolute cache_file) plus our bytes/xxh64 for verify."""
    skip = {"index", "key", "frame_indices"}
    return {**{k: v for k, v in entry.items() if k not in skip}, "cache_file": str(root / entry["cache_file"])}


def finalize(job: dict, timings: dict) -> dict:
    """Metadata shards, metadata.json, then manifest.json (last). Returns the manifest."""
    out = Path(job["out"])
    records, missing = all_done(job)
    if missing:
        raise PrepError(f"{out}: {len(missing)} of {len(records) + len(missing)} units are not done yet "
                        f"(first: items {missing[0].start}..{missing[0].stop - 1}); run the remaining tasks first")
    cfg = job["config"]
    entries = [metadata_entry(e, out) for r in records for e in r["items"]]
    shards = []
    for i, start in enumerate(range(0, max(len(entries), 1), fmt.SHARD_ITEMS)):
        part = entries[start:start + fmt.SHARD_ITEMS]
        path = out / fmt.shard_name(i)
        data = json.dumps(part, indent=1).encode()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        shards.append({"path": path.name, "items": len(part), "bytes": len(data), "xxh64": xxhash.xxh64_hexdigest(data)})
    family_video = cfg["family"] in fmt.VIDEO_FAMILIES
    metadata = {"processor": cfg["family"], "model_name": cfg["model"] or job["components"]["vae"],
                "model_type": {"flux": "flux", "wan": "wan", "hunyuan": "hunyuanvideo", "hunyuan15": "hunyuanvideo"}[cfg["family"]],
                "total_items": len(entries), "num_shards": len(shards), "shard_size": fmt.SHARD_ITEMS,
                "shards": [s["path"] for s in shards], "max_pixels": job["max_pixels"], "caption_format": "sidecar/jsonl",
                "mode": "video" if family_video else "image", "target_frames": cfg["frames"] if family_video else None,
                "tool": f"prep {__version__}", "fingerprint": job["fingerprint"]}
    write_json_atomic(out / fmt.METADATA, metadata)
    fsync_dir(out)
    skipped: dict[str, int] = {}
    examples: list[str] = []
    for r in records:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
        examples.extend(r["examples"][: max(0, 10 - len(examples))])
    bucket_counts = collections.Counter(f"{e['bucket_resolution'][0]}x{e['bucket_resolution'][1]}" for e in entries)
    plan = json.loads((Path(job["workdir"]) / "plan.json").read_text())
    per_input = collections.Counter(e.get("image_path") or e.get("video_path") for e in entries)
    inputs = [{"path": i["path"], "bytes": i["bytes"], "records": per_input.get(i["path"], 0)} for i in plan["items"]]
    encode_s = sum(r["encode_s"] for r in records)
    datasets = {"latents": {"metadata": fmt.METADATA, "shards": shards, "items": len(entries),
                            "bytes": sum(e["bytes"] for e in entries), "buckets": dict(sorted(bucket_counts.items())),
                            "video": family_video, "root": str(out),
                            "inputs_sha256": job.get("inputs_sha256")}}  # files, sizes and captions: a rerun checks them
    stats = {"items": len(entries), "skipped": skipped, "skipped_total": sum(skipped.values()), "skipped_examples": examples,
             "bucket_table": job["table"], "encode_s": round(encode_s, 3)}
    encoders = {**job["encoders"], "family": cfg["family"], "settings": job["settings"]}
    manifest = manifest_mod.build("latents", "automodel", job["fingerprint"], cfg, encoders, inputs, datasets, stats, timings)
    manifest_mod.write(out, manifest)
    shutil.rmtree(job["workdir"], ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------------- verify


def verify(out: Path, rehash: bool = True) -> list[str]:
    """Problems of a finished cache: manifest, metadata shards (xxh64), every item file (bytes,
    xxh64, loadable with weights_only=True), and, where the recorded VAE / text-encoder folders
    still exist, weights that changed since (a cache made with other weights)."""
    try:
        manifest = load_manifest(out)
    except (ManifestError, json.JSONDecodeError) as exc:
        return [str(exc)]
    if manifest.get("kind") != "latents":
        return [f"{out}: manifest kind {manifest.get('kind')!r}, not a latent cache"]
    problems = []
    settings = manifest["tokenizer"].get("settings", {})
    if fingerprint_of(settings) != manifest["fingerprint"]:
        problems.append(f"{out}: the fingerprint does not match the recorded settings (edited manifest?)")
    for role, identity in manifest["tokenizer"].items():
        if not isinstance(identity, dict) or WEIGHT_HASH not in identity:
            continue
        path = Path(identity["path"])
        if rehash and path.is_dir() and hash_folder(path) != identity[WEIGHT_HASH]:
            problems.append(f"{role} {path}: its files changed since the cache was made (other weights); re-run prep latents --overwrite")
    dataset = manifest["datasets"]["latents"]
    problems += _check_metadata(out, manifest)
    seen, listed = 0, set()
    for shard in dataset["shards"]:
        path = out / shard["path"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        if xxhash.xxh64_hexdigest(data) != shard["xxh64"]:
            problems.append(f"{path}: checksum differs from the manifest")
            continue
        for entry in json.loads(data):
            seen += 1
            listed.add(Path(*Path(entry["cache_file"]).parts[-2:]))
            problems.extend(_check_item(out, entry))
    if seen != dataset["items"]:
        problems.append(f"{out}: {seen} items in the metadata shards, the manifest says {dataset['items']}")
    # bucket-shaped folders the cache does not use count too (left by another run, copied in)
    folders = set(dataset["buckets"]) | {p.name for p in out.iterdir() if p.is_dir() and re.fullmatch(r"\d+x\d+", p.name)}
    stray = sorted(str(p.relative_to(out)) for bucket in sorted(folders) for p in (out / bucket).glob("*")
                   if p.relative_to(out) not in listed)
    if stray:
        problems.append(f"{out}: {len(stray)} file(s) in bucket folders that no metadata shard lists (first: {stray[0]})")
    return problems


def _check_metadata(out: Path, manifest: dict) -> list[str]:
    """metadata.json is what AutoModel's loaders open first: it must list the manifest's shards."""
    path = out / fmt.METADATA
    try:
        metadata = json.loads(path.read_text())
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    except ValueError:
        return [f"{path}: not JSON"]
    dataset = manifest["datasets"]["latents"]
    expected = {"shards": [s["path"] for s in dataset["shards"]], "total_items": dataset["items"],
                "fingerprint": manifest["fingerprint"]}
    found = {k: metadata.get(k) if isinstance(metadata, dict) else None for k in expected}
    wrong = [k for k in expected if found[k] != expected[k]]
    return [f"{path}: {', '.join(wrong)} differ from the manifest"] if wrong else []


def _check_item(out: Path, entry: dict) -> list[str]:
    import torch

    path = out.joinpath(*Path(entry["cache_file"]).parts[-2:])  # <W>x<H>/<name>: the folder may have moved
    try:
        data = path.read_bytes()
    except OSError:
        return [f"{path}: missing"]
    if len(data) != entry["bytes"] or xxhash.xxh64_hexdigest(data) != entry["xxh64"]:
        return [f"{path}: bytes differ from the metadata (changed after finalize)"]
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any load failure is the item's problem
        return [f"{path}: not loadable with weights_only=True ({type(exc).__name__})"]
    return []


def summary(manifest: dict, totals: dict | None, wall: float) -> str:
    stats, dataset = manifest["stats"], manifest["datasets"]["latents"]
    lines = [f"items       {stats['items']:,} in {len(dataset['buckets'])} bucket(s): "
             + ", ".join(f"{k} {v:,}" for k, v in list(dataset["buckets"].items())[:8]),
             f"bytes out   {dataset['bytes'] / 1e6:,.1f} MB"]
    if stats["skipped_total"]:
        lines.append(f"skipped     {stats['skipped_total']:,}: " + ", ".join(f"{k} {v:,}" for k, v in stats["skipped"].items()))
    if totals and totals["items"] and totals["wall_s"]:
        busy = totals["encode_s"] / totals["wall_s"]
        lines.append(f"this run    {totals['items']:,} items in {totals['wall_s']:.1f}s: {totals['items'] / totals['wall_s']:,.2f} items/s, "
                     f"encoder busy {busy:.0%}" + (f" ({totals['skipped_units']} unit(s) resumed)" if totals["skipped_units"] else ""))
    else:
        lines.append(f"wall        {wall:.2f}s")
    lines.append(f"fingerprint {manifest['fingerprint']}")
    lines.append(f"manifest    {Path(manifest['config']['output']) / MANIFEST_NAME}")
    return "\n".join(lines)


def echo(message: str) -> None:
    click.echo(message, err=True)
