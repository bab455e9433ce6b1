"""Benchmark `prep latents`: items/s and the share of wall time the encoder is busy.

    python bench/latents.py [--family flux|wan|both] [--device cpu|cuda] [--items N] [--preset 256p]

Builds tiny FLUX / Wan 2.1 models (real diffusers / transformers classes from small configs,
random weights, save_pretrained) unless --model DIR is given, copies the shared images or videos
to N inputs, and runs the real CLI in a fresh process. Busy share = time inside the encoder's
batch calls (CUDA-synchronised) / wall time of the encoding phase (model loading excluded).
Then, as the reference measured in the same run, the same models encode the same items, decoded
beforehand and held in memory, in a plain loop of the same batches (`loop_items_per_s`);
`vs_loop` = the CLI's items/s over it (the target: within 10%, i.e. >= 0.9).
The tiny-model builders are also what the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/tokenize.py would shadow the stdlib's tokenize.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared")).resolve()
TOKENIZER = SHARED / "data" / "tokenizers" / "gpt2"


def _tokenizer(folder: Path, max_length: int) -> None:
    """A real tokenizer (GPT-2 BPE from ../shared) saved with save_pretrained, padded with EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token = tok.eos_token
    tok.model_max_length = max_length
    tok.save_pretrained(folder)


def make_tiny_flux(root: Path, t5_tokens: int = 32) -> Path:
    """FLUX.1 layout: vae/ (AutoencoderKL, 16 latent channels, 8x down, FLUX's shift/scale),
    text_encoder/ (CLIPTextModel), tokenizer/ (77), text_encoder_2/ (T5EncoderModel), tokenizer_2/."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    root = Path(root)
    AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=8, layers_per_block=1,
                  shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False,
                  ).save_pretrained(root / "vae")
    vocab = 50257
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=77, projection_dim=32, eos_token_id=vocab - 1, bos_token_id=vocab - 1,
                                 pad_token_id=vocab - 1)).save_pretrained(root / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, is_encoder_decoder=False,
                            use_cache=False)).save_pretrained(root / "text_encoder_2")
    _tokenizer(root / "tokenizer", 77)
    _tokenizer(root / "tokenizer_2", t5_tokens)
    return root


def make_tiny_wan(root: Path) -> Path:
    """Wan 2.1 layout: vae/ (AutoencoderKLWan, z 16, 8x spatial, 4x temporal), text_encoder/
    (UMT5EncoderModel), tokenizer/."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    root = Path(root)
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(root / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=50257, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                is_encoder_decoder=False, use_cache=False)).save_pretrained(root / "text_encoder")
    _tokenizer(root / "tokenizer", 512)
    return root


def make_tiny_hunyuan(root: Path) -> Path:
    """HunyuanVideo layout: vae/ (AutoencoderKLHunyuanVideo), text_encoder/ (LlamaModel) with the
    real Llama-3 tokenizer from ../shared, text_encoder_2/ (CLIPTextModel), tokenizer_2/."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    root = Path(root)
    AutoencoderKLHunyuanVideo(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                              mid_block_add_attention=False).save_pretrained(root / "vae")
    llama = AutoTokenizer.from_pretrained(SHARED / "data" / "tokenizers" / "llama3")
    llama.pad_token = llama.eos_token
    llama.save_pretrained(root / "tokenizer")
    LlamaModel(LlamaConfig(vocab_size=len(llama), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=512)).save_pretrained(root / "text_encoder")
    vocab = 50257
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=77, projection_dim=32, eos_token_id=vocab - 1, bos_token_id=vocab - 1,
                                 pad_token_id=vocab - 1)).save_pretrained(root / "text_encoder_2")
    _tokenizer(root / "tokenizer_2", 77)
    return root


def make_tiny_hunyuan15(root: Path) -> Path:
    """HunyuanVideo 1.5 layout: vae/ (AutoencoderKLHunyuanVideo15: 32 channels, 16x spatial, 4x
    temporal), text_encoder/ (Qwen2_5_VLTextModel) with the real SmolLM2 tokenizer and its ChatML
    template from ../shared, text_encoder_2/ (T5EncoderModel) with tokenizer_2/ (ByT5),
    image_encoder/ (SiglipVisionModel, 28 px, 4 patches) with feature_extractor/."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo15
    from transformers import (AutoTokenizer, ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, SiglipImageProcessor,
                              SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel)

    torch.manual_seed(0)
    root = Path(root)
    AutoencoderKLHunyuanVideo15(block_out_channels=(16, 16, 32, 64, 64), layers_per_block=1).save_pretrained(root / "vae")
    chat = AutoTokenizer.from_pretrained(SHARED / "data" / "tokenizers" / "smollm2-135m-instruct")
    chat.save_pretrained(root / "tokenizer")
    Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(vocab_size=len(chat), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                                             rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})).save_pretrained(root / "text_encoder")
    ByT5Tokenizer().save_pretrained(root / "tokenizer_2")
    T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, is_encoder_decoder=False,
                            use_cache=False)).save_pretrained(root / "text_encoder_2")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=28, patch_size=14)).save_pretrained(root / "image_encoder")
    SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(root / "feature_extractor")
    return root


def make_inputs(folder: Path, video: bool, items: int) -> Path:
    """`items` copies of the shared images (or videos), each with a sidecar caption."""
    source = sorted((SHARED / "data" / ("videos" if video else "images")).iterdir())
    source = [p for p in source if p.suffix != ".gif"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(items):
        src = source[i % len(source)]
        dst = folder / f"{i:05d}_{src.name}"
        shutil.copyfile(src, dst)
        dst.with_suffix(".txt").write_text(f"{src.stem.replace('_', ' ')}, copy {i}")
    return folder


def run(family: str, device: str, items: int, preset: str, frames: int, batch_size: int | None, model: str | None, work: Path) -> dict:
    video = family != "flux"
    model_dir = Path(model) if model else (make_tiny_flux if family == "flux" else make_tiny_wan)(work / f"model_{family}")
    inputs = make_inputs(work / f"in_{family}", video, items)
    out = work / f"out_{family}"
    cmd = [sys.executable, "-m", "prep.latents.cli", str(inputs), "-o", str(out), "--family", family, "--model", str(model_dir),
           "--preset", preset, "--device", device, "--no-progress", "--overwrite"]
    if video:
        cmd += ["--frames", str(frames)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(result.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["timings"]
    return {"family": family, "device": device, "items": manifest["stats"]["items"], "preset": preset,
            "frames": frames if video else None, "process_wall_s": round(wall, 2), "encode_phase_s": t["run_wall_s"],
            "items_per_s": round(manifest["stats"]["items"] / t["run_wall_s"], 2), "encoder_busy": round(t["encode_s"] / t["run_wall_s"], 3),
            "cpus": len(os.sched_getaffinity(0))}


def predecoded_loop(family: str, device: str, model_dir: Path, inputs: Path, preset: str, frames: int,
                    batch_size: int | None) -> dict:
    """Items/s of the family's encode over items decoded beforehand (same buckets and batches as
    the CLI: consecutive items of one bucket), after one warm-up batch; models loaded as the CLI does."""
    import torch

    from loaders.formats import latents as fmt
    from prep.latents import buckets, families, media

    cls = families.family_class(family)
    cuda = device.startswith("cuda")
    model = cls(families.resolve_components(family, str(model_dir), None, []), device, "bf16" if cuda else "fp32",
                cls.default_deterministic)
    table = buckets.bucket_table(buckets.max_pixels_of(preset, None),
                                 fmt.VIDEO_QUANTIZATION if cls.video else fmt.IMAGE_QUANTIZATION)
    files = media.list_media([str(inputs)], cls.video)
    batch_size = batch_size or (1 if cls.video else 8)
    groups: dict = {}
    for i, path in enumerate(files):
        item = media.decode((i, str(path), cls.video, table, frames, cls.four_n_plus_one))
        groups.setdefault((item["bucket"], item["frames"]), []).append((item["pixels"], path.with_suffix(".txt").read_text()))
    batches = [items[i:i + batch_size] for items in groups.values() for i in range(0, len(items), batch_size)]

    def encode(batch):
        model.encode([p for p, _ in batch], [c for _, c in batch], list(range(len(batch))))
        if cuda:
            torch.cuda.synchronize()

    encode(batches[0])  # warm-up, as the CLI's first batch pays it too
    started = time.perf_counter()
    for batch in batches:
        encode(batch)
    wall = time.perf_counter() - started
    return {"loop_items": len(files), "loop_s": round(wall, 2), "loop_items_per_s": round(len(files) / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["flux", "wan", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--preset", default="256p")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model", default=None, help="A real model folder instead of the tiny one (one family).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for family in (["flux", "wan"] if args.family == "both" else [args.family]):
            result = run(family, args.device, args.items, args.preset, args.frames, args.batch_size, args.model, Path(tmp))
            model_dir = Path(args.model) if args.model else Path(tmp) / f"model_{family}"
            loop = predecoded_loop(family, args.device, model_dir, Path(tmp) / f"in_{family}", args.preset, args.frames,
                                   args.batch_size)
            print(json.dumps({**result, **loop, "vs_loop": round(result["items_per_s"] / loop["loop_items_per_s"], 3)}))


if __name__ == "__main__":
    main()
