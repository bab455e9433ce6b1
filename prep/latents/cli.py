"""`prep latents`: the click command (registered in prep/cli.py with main.add_command(latents))."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from loaders.formats.latents import PRESETS
from prep.errors import PrepError, StageCommand


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, cls=StageCommand)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Cache folder (created).")
@click.option("--family", type=click.Choice(["flux", "wan", "hunyuan", "hunyuan15"]), required=True,
              help="flux: images -> FLUX.1 latents + CLIP/T5. wan: videos -> Wan 2.1 latents + UMT5. "
                   "hunyuan: videos -> HunyuanVideo latents + LLaMA/CLIP. hunyuan15: videos -> HunyuanVideo 1.5 "
                   "latents + Qwen2.5-VL/ByT5 text and SigLIP first-frame embeddings (what AutoModel's hunyuan adapter reads).")
@click.option("--model", default=None, type=click.Path(file_okay=False),
              help="Diffusers-layout model folder (vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/; "
                   "hunyuan15 also image_encoder/, feature_extractor/).")
@click.option("--vae", default=None, type=click.Path(file_okay=False), help="VAE folder, instead of MODEL/vae.")
@click.option("--text-encoder", "text_encoders", multiple=True, type=click.Path(file_okay=False),
              help="Text encoder folder, instead of MODEL/text_encoder; repeat for the others in order: FLUX's T5 "
                   "(text_encoder_2); HunyuanVideo's CLIP; HunyuanVideo 1.5's ByT5, then its image_encoder.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="512p", show_default=True,
              help="Pixel budget of the buckets (the largest W x H of each aspect ratio under preset^2).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Pixel budget instead of --preset.")
@click.option("--frames", type=click.IntRange(min=1), default=33, show_default=True,
              help="Video frames sampled evenly over each video (np.linspace over its frame count); "
                   "Wan and HunyuanVideo take the largest 4n+1 not above it. Shorter videos give all their frames.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda (one encoder process per visible GPU, units shared by work stealing), cuda:N, or a list: cuda:0,cuda:1.")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Autocast dtype on CUDA. Default: bf16 on CUDA, fp32 on CPU.")
@click.option("--deterministic/--sample", default=None,
              help="Posterior mean (deterministic) or a sample seeded per item. Default as AutoModel: FLUX samples, Wan/HunyuanVideo take the mean.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-item posterior samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Items per encoder batch (one bucket a batch). Default: 8 images, 1 video.")
@click.option("--decode-workers", type=click.IntRange(min=1), default=None,
              help="CPU processes decoding media per device. Default: the usable CPUs minus one.")
@click.option("--unit-items", type=click.IntRange(min=1), default=None,
              help="Items per work unit (the grain of work stealing, Slurm slicing and resume). Default 64.")
@click.option("--captions", default=None, type=click.Path(exists=True),
              help="A local dataset of captions for files without a sidecar .txt or a captions.jsonl/metadata.jsonl "
                   "beside them: JSONL (.gz/.zst), Parquet, Arrow, a folder of them, or a save_to_disk folder.")
@click.option("--file-column", default="file_name", show_default=True,
              help="--captions column naming the media file (its path relative to the input folder, or its name).")
@click.option("--caption-column", default=None, help="--captions column holding the caption. Default: text, caption or prompt.")
@click.option("--caption-fallback", type=click.Choice(["none", "filename"]), default="none", show_default=True,
              help="filename: a file with no caption gets its name (AutoModel's fallback). none: it is a bad item.")
@click.option("--vae-tiling", is_flag=True,
              help="hunyuan15: encode in 256 px tiles with 0.25 overlap (less GPU memory for large videos; latents "
                   "differ near the seams from an untiled encode).")
@click.option("--allow-empty-captions", is_flag=True,
              help="Keep items whose caption is empty or blank (e.g. for unconditional training). Default: a bad item.")
@click.option("--skip-invalid", is_flag=True,
              help="Record and skip bad items (corrupt file, undecodable video, no caption), counted by reason in the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other weights or settings.")
@click.option("--task", default=None, help="Run only array task I of N (I/N, 0-based). Default: from SLURM_ARRAY_TASK_ID/COUNT.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def latents(inputs, output, family, model, vae, text_encoders, preset, max_pixels, frames, device, precision, deterministic,
            seed, batch_size, decode_workers, unit_items, captions, file_column, caption_column, caption_fallback,
            vae_tiling, allow_empty_captions, skip_invalid, overwrite, task, progress):
    """Encode images (FLUX) or videos (Wan 2.1, HunyuanVideo) into VAE latent caches by resolution bucket.

    INPUT is media files or folders (searched recursively). Captions come from a sidecar .txt per
    file, captions.jsonl / metadata.jsonl ({"file_name", "text"}) in the file's folder, or a
    column of a local dataset (--captions, --caption-column). The
    cache is NeMo AutoModel's layout (metadata.json, metadata_shard_NNNN.json, <W>x<H>/ item
    files) plus manifest.json; rerun the same command after a crash to resume.

    \b
    Examples:
      prep latents images/ -o cache/flux --family flux --model /models/FLUX.1-dev --preset 1024p --device cuda
      prep latents videos/ -o cache/wan --family wan --model /models/Wan2.1-T2V-14B-Diffusers --preset 512p --frames 33 --device cuda
    """
    from prep import plan
    from prep.latents import stage

    started = time.time()
    if not (model or vae):
        raise PrepError("--model DIR (a diffusers-layout folder) or --vae DIR with --text-encoder DIR is required")
    absolute = lambda path: path and os.path.abspath(path)  # noqa: E731  metadata and manifest hold absolute paths
    config = stage.LatentsConfig(inputs=[absolute(i) for i in inputs], output=output, family=family, model=absolute(model),
                                 vae=absolute(vae), text_encoders=[absolute(t) for t in text_encoders], preset=None if max_pixels else preset, max_pixels=max_pixels,
                                 frames=frames, device=device, precision=precision, deterministic=deterministic, seed=seed,
                                 batch_size=batch_size, unit_items=unit_items, decode_workers=decode_workers, captions=absolute(captions),
                                 file_column=file_column, caption_column=caption_column, caption_fallback=caption_fallback,
                                 vae_tiling=vae_tiling, allow_empty_captions=allow_empty_captions, skip_invalid=skip_invalid)
    task_id, tasks = plan.parse_task(task)
    progress = sys.stderr.isatty() if progress is None else progress
    with plan.output_lock(Path(output), task_id, tasks):
        _latents(config, overwrite, task_id, tasks, progress, started)


def _latents(config, overwrite: bool, task_id: int, tasks: int, progress: bool, started: float) -> None:
    from prep import plan
    from prep.latents import stage

    output = config.output
    job = stage.prepare(config, overwrite, stage.echo, alone=tasks == 1)
    if job["complete"]:
        stage.echo(f"{output}: already complete (same models and settings); nothing to do")
        click.echo(stage.summary(json.loads((Path(job["out"]) / "manifest.json").read_text()), None, time.time() - started))
        return
    mine = plan.task_units(stage.plan_units(job), task_id, tasks)
    totals = stage.run_units(job, mine, progress, stage.echo)
    if tasks > 1:
        stage.echo(f"task {task_id}/{tasks}: {totals['units']} unit(s) run, {totals['skipped_units']} already done, "
                   f"{totals['items']:,} items in {time.time() - started:.1f}s")
        stage.echo("when every task is done, rerun this command without --task (or prep finalize) to finalize")
        return
    manifest = stage.finalize(job, {"wall_s": round(time.time() - started, 3), "encode_s": round(totals["encode_s"], 3),
                                    "run_wall_s": round(totals["wall_s"], 3)})
    click.echo(stage.summary(manifest, totals, time.time() - started))


if __name__ == "__main__":
    latents()
