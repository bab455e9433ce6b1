"""The latents stage: plan (media -> items -> units of `unit_items` consecutive items), run units
on one device worker per device (prep.latents.worker), finalize (prep.latents.finalize).

A Slurm array task takes its round-robin slice of the units; several devices share the units by
work stealing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from loaders.formats import latents as fmt
from loaders.manifest import MANIFEST_NAME, load as load_manifest
from prep.errors import BadRecord, PrepError
from prep.latents import buckets, media
from prep.latents import finalize as finalizing
from prep.latents.families import family_class, resolve_components
from prep.latents.settings import DEFAULT_UNIT_ITEMS, LatentsConfig, encoder_identity, fingerprint_of, settings_of
from prep.latents.worker import decode_workers, devices_for, open_worker
from prep.pipeline import workdir as wd
from prep.pipeline.stage import Stage
from prep.pipeline.units import Unit


def clear_outputs(out: Path) -> None:
    """Remove what an earlier latents run wrote here (for --overwrite), and nothing else."""
    for path in list(out.glob("metadata_shard_*.json")) + [out / fmt.METADATA, out / MANIFEST_NAME]:
        path.unlink(missing_ok=True)
    for folder in out.iterdir() if out.exists() else []:
        if folder.is_dir() and "x" in folder.name and folder.name.replace("x", "").isdigit():
            shutil.rmtree(folder, ignore_errors=True)
    wd.clear_workdir(out)


class LatentsStage(Stage):
    kind, name, progress_unit = "latents", "latents", "item"
    same = "same models and settings"

    def prepare(self, overwrite: bool, log, alone: bool = False) -> dict:
        return prepare(self.config, overwrite, log, alone)

    def stale(self, job: dict) -> list[Path]:
        return list(Path(job["out"]).glob("*x*/.*.tmp.*"))

    def new_totals(self, pending: int, skipped: int) -> dict:
        return {"units": pending, "skipped_units": skipped, "items": 0, "encode_s": 0.0, "wall_s": 0.0}

    def execute(self, job: dict, pending: list, run) -> None:
        """One device runs here; several run one encoder process each (spawned: CUDA is not
        fork-safe), taking units from a shared queue."""
        cfg = job["config"]
        devices = devices_for(cfg["device"])
        self.started, self.single = time.perf_counter(), len(devices) == 1
        if self.single:
            run.log(f"encoder: {cfg['family']} on {devices[0]} ({cfg['precision']}), {decode_workers(cfg)} decode worker(s)")
        else:
            run.log(f"encoder: {cfg['family']} on {', '.join(devices)}: one process each, units shared by work stealing")
        try:
            run.executor.run(open_worker, job, devices, pending, run.report, "spawn",
                             died=lambda device, how: f"{device}: the encoder process died ({how}; out of memory?); the units "
                                                      "finished so far are kept: rerun the same command to resume")
        finally:
            run.totals["wall_s"] = time.perf_counter() - self.started

    def event(self, totals: dict, kind: str, value) -> None:
        if kind == "progress":
            totals["items"] += value
        if kind == "ready" and self.single:
            self.started = value  # one device: busy share over the encoding, not the model loading

    def account(self, totals: dict, record: dict) -> int:
        totals["encode_s"] += record["encode_s"]
        return 0  # items were counted as they were written

    def task_lines(self, task: int, tasks: int, totals: dict, wall: float) -> list[str]:
        return [f"task {task}/{tasks}: {totals['units']} unit(s) run, {totals['skipped_units']} already done, "
                f"{totals['items']:,} items in {wall:.1f}s",
                "when every task is done, rerun this command without --task (or prep finalize) to finalize"]

    def finalize(self, job: dict, timings: dict, totals: dict | None = None) -> dict:
        if totals is not None:
            timings = {**timings, "encode_s": round(totals["encode_s"], 3), "run_wall_s": round(totals["wall_s"], 3)}
        return finalizing.finalize(job, timings)

    def summary(self, manifest: dict, totals: dict | None, wall: float) -> str:
        return finalizing.summary(manifest, totals, wall)


def prepare(config: LatentsConfig, overwrite: bool, log, alone: bool = False) -> dict:
    """Resolve models, captions and buckets; check fingerprints; write or check the plan."""
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
    settings = settings_of(config, family, encoders, table, quantization)
    fp = fingerprint_of(settings)
    workdir = wd.workdir_of(out)
    wd.claim_output(out, fp, overwrite, clear_outputs, "a latent cache made with other weights or settings", log, alone)
    inputs_digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    if (out / MANIFEST_NAME).exists():
        made_from = load_manifest(out)["datasets"]["latents"].get("inputs_sha256")
        if made_from is not None and made_from != inputs_digest:
            raise PrepError(f"{out}: the inputs or captions changed since this cache was made (files added, removed, "
                            "resized or recaptioned); pass --overwrite to make it again")
        return {"complete": True, "out": str(out)}

    step = config.unit_items
    plan = {"items": items, "unit_items": step,
            "units": [Unit(i, items[start]["path"], start, min(start + step, len(items))).to_json()
                      for i, start in enumerate(range(0, len(items), step))]}
    for sub in ("done", "journal"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    wd.write_plan(workdir, plan, f"{out}: the inputs or captions changed since this cache was started; "
                                 "restore them, or pass --overwrite to start again")
    job = {"complete": False, "kind": "latents", "out": str(out), "workdir": str(workdir), "fingerprint": fp,
           "inputs_sha256": inputs_digest,
           "config": config.to_dict(), "settings": settings, "encoders": encoders, "max_pixels": max_pixels,
           "quantization": quantization, "table": buckets.describe(table),
           "components": {"vae": str(components.vae), "text_encoders": [str(p) for p in components.text_encoders],
                          "tokenizers": [str(p) for p in components.tokenizers]}}
    wd.write_job(workdir, job)
    return job
