"""A latents device worker: one device's models (loaded once), a decode pool, and the unit loop.

CPU processes decode items (in order, a window ahead, across unit boundaries) while the device
encodes batches of one bucket. Batches are formed from the unit's item order alone, so their
composition never depends on timing. Each batch's files are written under temporary names and
renamed, then the batch is appended to the unit's journal (fsync), the batch's commit point: a
resumed unit skips journaled batches, so no committed item is encoded again (a batch killed
between its file renames and its journal line is run again whole, rewriting the same files), and
the batches it still runs are the ones an uninterrupted run would have run. A finished unit gets a
done-record.
"""

from __future__ import annotations

import collections
import io
import json
import multiprocessing as mp
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from loaders.formats import latents as fmt
from prep.errors import BadRecord, PrepError
from prep.latents import buckets, media
from prep.pipeline import checksum, durable, faults
from prep.pipeline.processes import default_workers, stop_pool
from prep.pipeline.units import Unit
from prep.pipeline.workdir import read_plan, write_done


def decode_workers(config: dict) -> int:
    """Decode processes per device: --decode-workers, else the usable CPUs minus one."""
    return config["decode_workers"] or max(1, default_workers() - 1)


def open_worker(job: dict, device: str, child: bool) -> "DeviceWorker":
    """The executor's factory: a device worker reporting to the executor."""
    return DeviceWorker(job, device)


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


class DeviceWorker:
    """One device: the family's models (loaded once), a decode pool, and the unit loop."""

    def __init__(self, job: dict, device: str):
        from prep.latents.families import Components, family_class

        self.job, self.report = job, None
        c, cfg = job["components"], job["config"]
        self.cfg, self.out, self.workdir = cfg, Path(job["out"]), Path(job["workdir"])
        self.plan_items = read_plan(self.workdir)["items"]
        self.table = [buckets.Bucket(b["id"], *b["resolution"]) for b in job["table"]]
        self.family_cls = family_class(cfg["family"])
        self.workers = workers = decode_workers(cfg)
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
            torch.set_num_threads(max(1, default_workers() - workers))
        self.batches = 0
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
            for index in unit.items:
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

    def run(self, units, report) -> None:
        """Encode the units (an iterable; a shared queue's for work stealing), reporting progress
        (items) and done-records."""
        self.report = report
        report("ready", time.perf_counter())  # the models are loaded: the encoder's busy share counts from here
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
        self.report("progress", 1)

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
        durable.append_line(run.journal_path, json.dumps({"items": entries}).encode() + b"\n")
        self.report("progress", len(todo))
        self.batches += 1
        faults.crash_after_batches(self.batches)  # a kill between batches

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
        durable.write_bytes(target, data, sync_folder=False)  # the journal line is the commit point
        entry = {"index": index, "key": key, "cache_file": relative, "bytes": len(data), "xxh64": checksum.item_checksum(data),
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
        record = {"unit": run.unit.to_json(), "fingerprint": self.job["fingerprint"], "items": entries,
                  "skipped": reasons, "examples": [f"{self.plan_items[i]['path']}: {r}" for i, r in run.failures[:5]],
                  "encode_s": run.encode_s}
        write_done(self.workdir, run.unit, record)
        run.journal_path.unlink(missing_ok=True)
        self.report("done", record)


def _decoders(workers: int, start: str) -> ProcessPoolExecutor:
    context = mp.get_context(start if start in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=media.init_worker)
