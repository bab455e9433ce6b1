"""What the latents tests share: the real `prep latents` command, media with captions, cache bytes.
Import with `from latent_helpers import *`; the fixtures are in this folder's conftest.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PREP_SHARED", ROOT.parent / "shared")).resolve()
IMAGES, VIDEOS = SHARED / "data" / "images", SHARED / "data" / "videos"
VIDEO_PIXELS = 128 * 128  # tiny buckets keep the Wan VAE fast on CPU
VIDEO_FRAMES = 9

pytest.importorskip("diffusers")
pytest.importorskip("av")


def latents_cli(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `prep latents` command: in a fresh process when `env` is given (the kill hooks
    exit the process), else in this one through click's runner (torch and diffusers take ~10 s
    to import on the test machines)."""
    argv = [*map(str, args), "--no-progress"]
    if env:
        result = subprocess.run([sys.executable, "-m", "prep.latents.cli", *argv], capture_output=True,
                                text=True, cwd=ROOT, env={**os.environ, **env}, timeout=600)
    else:
        from click.testing import CliRunner

        from prep.latents.cli import latents

        ran = CliRunner().invoke(latents, argv, catch_exceptions=False)
        result = subprocess.CompletedProcess(argv, ran.exit_code, ran.stdout, ran.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"prep latents {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def cache_bytes(out: Path) -> dict[str, bytes]:
    """Every item file and metadata file of a cache, by relative name."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and ".prep" not in p.parts}


def captioned_copies(folder: Path, sources: list[Path], style: str = "sidecar") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for src in sources:
        shutil.copyfile(src, folder / src.name)
        caption = f"a photo of {src.stem.replace('_', ' ')}"
        if style == "sidecar":
            (folder / src.name).with_suffix(".txt").write_text(caption)
        else:
            lines.append(f'{{"file_name": "{src.name}", "text": "{caption}"}}')
    if lines:
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
