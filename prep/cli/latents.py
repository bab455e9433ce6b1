"""`prep latents`: parse the options into a LatentsConfig and run the latents stage."""

from __future__ import annotations

import os
import time

import click

from loaders.formats.latents import PRESETS
from prep.cli.errors import StageCommand
from prep.cli.options import CONTEXT, run_options
from prep.errors import PrepError
from prep.latents import families


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Cache folder (created).")
@click.option("--family", type=click.Choice(families.names()), required=True,
              help=" ".join(families.family_class(name).help for name in families.names()))
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
@run_options
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
    from prep.latents.settings import LatentsConfig
    from prep.latents.stage import LatentsStage
    from prep.pipeline.driver import run_stage

    started = time.time()
    if not (model or vae):
        raise PrepError("--model DIR (a diffusers-layout folder) or --vae DIR with --text-encoder DIR is required")
    absolute = lambda path: path and os.path.abspath(path)  # noqa: E731  metadata and manifest hold absolute paths
    config = LatentsConfig(inputs=[absolute(i) for i in inputs], output=output, family=family, model=absolute(model),
                           vae=absolute(vae), text_encoders=[absolute(t) for t in text_encoders], preset=None if max_pixels else preset,
                           max_pixels=max_pixels, frames=frames, device=device, precision=precision, deterministic=deterministic,
                           seed=seed, batch_size=batch_size, unit_items=unit_items, decode_workers=decode_workers,
                           captions=absolute(captions), file_column=file_column, caption_column=caption_column,
                           caption_fallback=caption_fallback, vae_tiling=vae_tiling, allow_empty_captions=allow_empty_captions,
                           skip_invalid=skip_invalid)
    run_stage(LatentsStage(config), output, overwrite, task, progress, started)
