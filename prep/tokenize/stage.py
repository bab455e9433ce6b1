"""The tokenize stage: check the config against the tokenizer and recipe, plan byte-range units of
the inputs, run them on workers (with the fast backend's exactness probe), finalize the datasets."""

from __future__ import annotations

import json
from pathlib import Path

from loaders.formats import indexed, nanogpt
from loaders.manifest import MANIFEST_NAME, ManifestError, load as load_manifest
from prep import recipes, sources
from prep.recipes import custom
from prep.errors import PrepError
from prep.pipeline import durable, workdir as wd
from prep.pipeline.processes import default_workers
from prep.pipeline.stage import Stage
from prep.pipeline.units import Unit
from prep.tokenize import finalize as finalizing
from prep.tokenize.config import TokenizeConfig, tokenize_fingerprint
from prep.tokenize.tokenizer import BackendMismatch, Encoder, ReferenceIds, load_encoder, load_spec, probe_mismatch, probe_texts
from prep.tokenize.worker import first_record, load_state, open_worker, sample_texts
from prep.writers import megatron

MIN_UNIT, MAX_UNIT = 8 << 20, 256 << 20


def default_unit_bytes(total_bytes: int, smallest: int = MIN_UNIT) -> int:
    """About 256 units for the corpus, within [8 MiB (or the recipe's `smallest`), 256 MiB]: small
    enough to balance 2..N workers, large enough that per-unit costs vanish."""
    return min(MAX_UNIT, max(smallest, -(-total_bytes // 256)))


def make_plan(inputs: list[str], unit_bytes: int | None, smallest: int = MIN_UNIT) -> dict:
    """Byte-range units of the sorted input files; the files' sizes and modification times too (a
    file rewritten with the same size is another input)."""
    files = sources.expand_inputs(inputs)
    described = [{"path": str(p), "bytes": (st := p.stat()).st_size, "mtime_ns": st.st_mtime_ns} for p in files]
    unit_bytes = unit_bytes or default_unit_bytes(sum(f["bytes"] for f in described), smallest)
    units = []
    for path in files:
        for start, stop in sources.plan_file(path, unit_bytes):
            units.append(Unit(len(units), str(path), start, stop))
    return {"inputs": described, "unit_bytes": unit_bytes, "units": [u.to_json() for u in units]}


def clear_outputs(out: Path) -> None:
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
    wd.clear_workdir(out)


def chat_template_of(config: TokenizeConfig, spec) -> str | None:
    """The template text: --chat-template's file (one line if missing or empty), else the tokenizer's."""
    if not config.chat_template:
        return spec.chat_template
    if not Path(config.chat_template).is_file():
        raise PrepError(f"--chat-template {config.chat_template}: no such file")
    template = Path(config.chat_template).read_text()
    if not template.strip():
        raise PrepError(f"{config.chat_template}: the chat template file is empty")
    return template


# options that only some recipes read: option -> (the recipes, its flag); set for another, an error
RECIPE_OPTIONS = {
    "query_prefix": (("retrieval",), "--query-prefix"), "passage_prefix": (("retrieval",), "--passage-prefix"),
    "use_dataset_instruction": (("retrieval",), "--use-dataset-instruction"),
    "query_max_length": (("retrieval",), "--query-max-length"), "doc_max_length": (("retrieval",), "--doc-max-length"),
    "chat_template": (("chat", "instruction", "completion"), "--chat-template"),
    "use_chat_template": (("instruction", "completion"), "--use-chat-template"),
    "preset": (("instruction",), "--preset"),
    "mask_reasoning": (("chat",), "--mask-reasoning"), "last_turn_only": (("chat",), "--last-turn-only"),
}


def _check_applies(config: TokenizeConfig, feeds: str) -> None:
    """An option set for a recipe that does not read it is a mistake worth one line, not a silent no-op."""
    defaults = TokenizeConfig.__dataclass_fields__
    for name, (takers, flag) in RECIPE_OPTIONS.items():
        if getattr(config, name) != defaults[name].default and feeds not in takers:
            raise PrepError(f"{flag} is for --recipe {' or '.join(takers)}, not --recipe {config.recipe}")


def encoding_job(config: TokenizeConfig, spec, dtype: str, chat_template: str | None, base: str | None, recipe_job: dict) -> dict:
    """What a recipe and the workers read of a job: how records become tokens (also `verify --resample`'s)."""
    return {"config": config.to_dict(), "keys": config.keys, "dtype": dtype, "eod_id": spec.eod_id if config.eod else None,
            "bos_id": spec.bos_id if config.bos else None, "split_special_tokens": config.split_special_tokens,
            "dtypes": {"loss_mask": "uint8"} if recipes.get(config.recipe, base).loss_mask else {},
            "chat_template": chat_template, "special_tokens_map": spec.special_tokens_map, "recipe_base": base, **recipe_job}


class TokenizeStage(Stage):
    kind, name, progress_unit = "tokens", "tokenize", "B"
    parts = megatron.PARTS_FORMAT

    def __init__(self, config: TokenizeConfig | None = None):
        super().__init__(config)
        self.workers = config.workers if config else default_workers()
        self.merger = None

    def prepare(self, overwrite: bool, log, alone: bool = False) -> dict:
        """Resolve the tokenizer, check fingerprints, write or check the plan. Returns the job state."""
        config = self.config
        out = Path(config.output)
        spec = load_spec(config.tokenizer, config.eod_token, config.bos_token)
        base = custom.base_of(config.recipe, first_record(config.inputs)) if custom.is_custom(config.recipe) else None
        recipe = recipes.get(config.recipe, base)
        nanogpt_format = config.format == "nanogpt"
        sft = recipe.loss_mask
        feeds = base or config.recipe  # a user's callable feeds a built-in recipe
        if config.mask_convention != "prep" and (feeds not in ("chat", "instruction", "completion") or config.mask_reasoning):
            raise PrepError("--mask-convention automodel is for --recipe chat (without --mask-reasoning), instruction or completion")
        _check_applies(config, feeds)
        if config.per_turn and config.mask_convention != "prep":
            raise PrepError("--per-turn is prep's convention (AutoModel has no per-turn samples); drop --mask-convention automodel")
        if config.per_turn and feeds != "chat":
            raise PrepError(f"--per-turn is for --recipe chat (one sample per assistant turn), not --recipe {config.recipe}")
        recipe_job = recipe.prepare(config, spec)
        if sft and nanogpt_format and config.pack:
            raise PrepError("--pack is for --format megatron; NanoGPT shards are one token stream (the loaders cut windows from it)")
        template = chat_template_of(config, spec)
        if recipe.needs_template(config) and not template:
            raise PrepError(f"{config.tokenizer}: the tokenizer has no chat template; pass --chat-template FILE.jinja")
        if config.bos is None:  # NanoGPT data starts every document with BOS; Megatron's does not
            config.bos = nanogpt_format and spec.bos_id is not None
        if config.eod is None:  # Megatron's --append-eod; NanoGPT's BOS delimits documents; chat templates end turns
            config.eod = not recipe.needs_template(config) and (sft or not nanogpt_format)  # an SFT answer ends with it, trained
        if recipe.keys:
            config.keys = list(recipe.keys)
        if sft:
            config.keys = ["tokens", "loss_mask"]
        else:
            for flag, value in (("--pack", config.pack), ("--max-length", config.max_length)):
                if value:  # pretraining documents are whole; the GPT loaders cut them into sequences
                    raise PrepError(f"{flag} is for the SFT recipes ({', '.join(n for n in recipes.names() if recipes.get(n).loss_mask)})")
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
                                  dtype.name, template if sft else None,
                                  custom.source_sha256(config.recipe) if base else None)
        workdir = wd.workdir_of(out)
        wd.claim_output(out, fp, overwrite, clear_outputs, "output made with another configuration", log, alone)
        if (out / MANIFEST_NAME).exists():
            return {"complete": True, "out": str(out)}

        unit_bytes = config.unit_bytes
        if unit_bytes is None and (workdir / "plan.json").exists():  # keep the unit size the run started with
            unit_bytes = wd.read_plan(workdir)["unit_bytes"]
        plan = make_plan(config.inputs, unit_bytes, recipe.min_unit_bytes or MIN_UNIT)
        (workdir / "parts").mkdir(parents=True, exist_ok=True)
        (workdir / "done").mkdir(exist_ok=True)
        wd.write_plan(workdir, plan, f"{out}: the inputs changed since this output was started, or --unit-size did (files, sizes, "
                                     "modification times or units differ); restore them, or pass --overwrite to start again")
        job = {
            "complete": False, "out": str(out), "workdir": str(workdir), "fingerprint": fp,
            "tokenizer": {**spec.manifest(), "dtype": dtype.name},
            "skip_invalid": config.skip_invalid, "backend": config.backend, "format": config.format, "recipe": config.recipe,
            **encoding_job(config, spec, dtype.name, template if sft else None, base, recipe_job),
        }
        wd.write_job(workdir, job)
        durable.write_bytes(workdir / "tokenizer.json", spec.json.encode())
        return job

    def stale(self, job: dict) -> list[Path]:
        return [*(Path(job["workdir"]) / "parts").glob("*.tmp.*"), *Path(job["out"]).glob(".*.tmp.*")]

    def new_totals(self, pending: int, skipped: int) -> dict:
        return {"units": pending, "skipped_units": skipped, "bytes": 0, "records": 0, "tokens": 0}

    def before(self, job: dict, units: list[Unit], done: set[int], whole: bool) -> None:
        # A whole job of one unsharded, unpacked Megatron dataset per key: the final .bin files are
        # assembled while units run, and handed to finalize.
        c, self.units = job["config"], units
        if (whole and job["format"] == "megatron" and not c["shard_tokens"] and not c.get("pack")
                and recipes.of_job(job).keys is None):
            self.merger = megatron.StreamingMerge(Path(job["workdir"]), Path(job["out"]), units, job["keys"])
            self.merger.restart(done)

    def after(self, job: dict, totals: dict, failed: bool) -> None:
        if self.merger is not None:
            if failed:
                self.merger.abort()
            else:
                totals["merged"] = self.merger.finish()

    def account(self, totals: dict, record: dict) -> int:
        totals["bytes"] += record["bytes"]
        totals["records"] += record["records"]
        totals["tokens"] += sum(k["tokens"] for key, k in record["keys"].items() if key != "loss_mask")  # a mask is no tokens
        if self.merger is not None:
            self.merger.unit_done(record["unit"]["index"])
        return record["bytes"]

    def execute(self, job: dict, pending: list[Unit], run) -> None:
        """The fast backend's ids are checked against HF tokenizers' on a probe while the workers
        start; on a difference the run falls back to HF (auto) and redoes what it wrote."""
        workdir = Path(job["workdir"])
        tokenizer_json = (workdir / "tokenizer.json").read_text()
        # The same sample every run (the plan's first unit), so a resumed run re-checks the same thing.
        plan_units = wd.plan_units(workdir)
        sample = sample_texts(plan_units, recipes.of_job(job).probe_keys() or job["keys"])
        reference = None
        if job["backend"] != "hf":  # HF's ids for the probe, computed while the fast backend loads
            reference = ReferenceIds(tokenizer_json, job["split_special_tokens"], probe_texts(tokenizer_json, sample))
        encoder, note = load_encoder(tokenizer_json, job["backend"], job["split_special_tokens"])
        workers = max(1, min(self.workers, len(pending)))
        # on stdout with the summary: stderr keeps to warnings and, on bad input, the one error line
        print(f"tokenizer: {note}; dtype {job['dtype']}; {workers} worker(s)", flush=True)
        if encoder.backend == "hf" and reference is not None:
            reference.close()
        checked = {}

        def check() -> None:
            if encoder.backend == "hf":
                return
            mismatch, count = probe_mismatch(encoder, sample, reference)
            if mismatch:
                raise BackendMismatch(mismatch)
            checked["note"] = f"{encoder.backend} (ids equal to HF tokenizers on {count} probe texts)"

        try:
            self._pool(job, pending, workers, encoder, tokenizer_json, run, check)
            note = checked.get("note", note)
        except BackendMismatch as exc:
            if job["backend"] == "fastokens":
                raise PrepError(str(exc)) from None
            run.log(f"warning: {exc}; falling back to HF tokenizers (slow)")
            note = f"HF tokenizers (slow; {exc})"
            for unit in plan_units:  # nothing the untrusted backend wrote is kept
                record = wd.load_done(workdir, unit, job["fingerprint"], self.parts)
                if record and record.get("backend") == "fastokens":
                    wd.done_path(workdir, unit).unlink()
            pending = [u for u in self.units if wd.load_done(workdir, u, job["fingerprint"], self.parts) is None]
            run.totals.update(self.new_totals(len(pending), len(self.units) - len(pending)))
            if self.merger is not None:  # what it merged came from the untrusted backend too
                self.merger.abort()
                self.merger.restart({u.index for u in self.units} - {u.index for u in pending})
            encoder = Encoder(tokenizer_json, "hf", job["split_special_tokens"])
            self._pool(job, pending, workers, encoder, tokenizer_json, run, None)
        job["tokenizer"]["backend"] = note
        wd.write_job(workdir, job)

    def _pool(self, job, pending, workers, encoder, tokenizer_json, run, check) -> None:
        recipe = load_state(job, encoder, tokenizer_json)  # forked workers inherit the loaded tokenizer (loading one can take seconds)
        template = getattr(recipe, "template", None)
        if template is not None:  # how the trained spans are found, in the manifest
            job["tokenizer"]["mask_method"] = template.method
            job["tokenizer"]["end_of_turn"] = list(template.end_tokens)
        spawn_job = {**job, "tokenizer_json": tokenizer_json, "encoder_backend": encoder.backend}
        run.executor.run(open_worker, spawn_job, [None] * workers, pending, run.report, "fork", while_running=check,
                         died=lambda slot, how: f"a worker process died ({how}; killed, or out of memory?); the units finished "
                                                "so far are kept: rerun the same command to resume (with fewer --workers if memory is short)")

    def task_lines(self, task: int, tasks: int, totals: dict, wall: float) -> list[str]:
        return [f"task {task}/{tasks}: {totals['units']} unit(s) run, {totals['skipped_units']} already done, "
                f"{totals['records']:,} documents, {totals['tokens']:,} tokens in {wall:.1f}s",
                f"when every task is done: prep finalize {self.config.output}"]

    def finalize(self, job: dict, timings: dict, totals: dict | None = None) -> dict:
        if totals is not None:
            timings = {**timings, "workers": self.workers}
        return finalizing.finalize(job, timings, (totals or {}).get("merged"))

    def summary(self, manifest: dict, totals: dict | None, wall: float) -> str:
        return finalizing.summary(manifest, totals, wall)
