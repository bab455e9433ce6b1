"""Media listing, captions, and decoding to bucket-sized uint8 pixels (runs in CPU worker processes).

Imports no torch: decode workers stay small and start fast. Every failure is returned as a
reason (never raised, never dropped), so the stage can stop or count it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prep.errors import BadRecord, PrepError
from prep.pipeline import faults
from prep.latents.buckets import Bucket, cover_crop, nearest_bucket

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
CAPTION_KEYS = ("text", "caption", "prompt")


def list_media(inputs: list[str], video: bool) -> list[Path]:
    """Media files under INPUTs (files or folders, recursively), sorted, of the stage's kind."""
    extensions = VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, macOS ._ AppleDouble files: no media
                found += [Path(root, f).absolute() for f in files if not f.startswith(".") and Path(f).suffix.lower() in extensions]
        elif path.is_file():
            found.append(path.absolute())
        else:
            raise PrepError(f"{text}: no such file or folder")
    if not found:
        kind = "video" if video else "image"
        raise PrepError(f"no {kind} files ({', '.join(sorted(extensions))}) under {', '.join(inputs)}")
    # A file reached twice (a symlinked folder, a file named twice) is one item, under its first path.
    first: dict[Path, Path] = {}
    for file in sorted(found):
        first.setdefault(file.resolve(), file)
    return sorted(first.values())


def _caption_index(folder: Path, cache: dict) -> dict[str, str]:
    """file_name -> text from the folder's captions.jsonl / metadata.jsonl (HF imagefolder style)."""
    if folder not in cache:
        index: dict[str, str] = {}
        for name in CAPTION_FILES:
            if (folder / name).exists():
                for file, text in dataset_captions(str(folder / name)).items():
                    index.setdefault(file, text)
        cache[folder] = index
    return cache[folder]


def dataset_captions(source: str, file_column: str = "file_name", caption_column: str | None = None) -> dict[str, str]:
    """file name -> caption from a local dataset: a JSONL (.gz/.zst), Parquet or Arrow file, a
    folder of them, or a `save_to_disk` folder; `caption_column` defaults to the first of
    text / caption / prompt that the rows hold. Streamed with prep's own readers."""
    from prep import sources
    from prep.errors import Rejects

    index: dict[str, str] = {}
    columns = [file_column, caption_column] if caption_column else None  # None: every column (to find the caption's)
    for path in sources.expand_inputs([source]):
        for start, stop in sources.plan_file(path, 1 << 62):
            for records, locate in sources.read_unit(str(path), start, stop, columns, Rejects(skip=False), 16 << 20):
                for j, record in enumerate(records):
                    column = caption_column or next((k for k in CAPTION_KEYS if isinstance(record.get(k), str)), None)
                    name, text = record.get(file_column), record.get(column) if column else None
                    if not isinstance(name, str) or not isinstance(text, str):
                        wanted = column or " or ".join(CAPTION_KEYS)
                        raise BadRecord(str(path), locate(j), f"expected strings under {file_column!r} and {wanted!r}")
                    key = str(Path(name))
                    if index.setdefault(key, text) != text:
                        raise BadRecord(str(path), locate(j), f"a second, different caption for {name!r}")
    return index


def find_captions(files: list[Path], captions: str | None = None, file_column: str = "file_name",
                  caption_column: str | None = None) -> dict[str, str]:
    """Caption of each file: its sidecar .txt, else a captions.jsonl / metadata.jsonl entry in its
    folder or an ancestor's (file_name relative to that folder), else the `captions` dataset's
    (--captions: JSONL, Parquet, Arrow or a saved dataset; file name matched by relative path or
    by name). Files without one are left out."""
    explicit = dataset_captions(captions, file_column, caption_column) if captions else {}
    cache: dict = {}
    found = {}
    for file in files:
        sidecar = next((s for s in (file.with_suffix(".txt"), file.with_suffix(".TXT")) if s.exists()), None)
        if sidecar is not None:
            try:
                found[str(file)] = sidecar.read_text(encoding="utf-8-sig").strip()  # -sig: Notepad's byte order mark
            except UnicodeDecodeError as exc:
                raise BadRecord(str(sidecar), None, f"caption is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                                    "re-save it as UTF-8") from None
            continue
        for folder in [file.parent, *file.parent.parents][:4]:
            text = _caption_index(folder, cache).get(str(file.relative_to(folder)))
            if text is not None:
                found[str(file)] = text
                break
        else:
            text = explicit.get(file.name) or next((v for k, v in explicit.items() if str(file).endswith("/" + k)), None)
            if text is not None:
                found[str(file)] = text
    return found


# ----------------------------------------------------------------------------------- images


def _to_rgb(image) -> np.ndarray:
    """RGB uint8 of any Pillow mode: EXIF orientation applied, alpha composited over white,
    palettes expanded, 16- and 32-bit samples scaled (not clipped) to 8 bits."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16).astype(np.float64)
        peak = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
        gray = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(array * 255.0 if array.max() <= 1.0 else array), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def decode_image(path: str, table: list[Bucket]) -> dict:
    """Pixels of the image's bucket: nearest aspect ratio, Lanczos resize to cover, centre crop."""
    from PIL import Image

    with Image.open(path) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:  # Pillow itself only refuses twice as many
            raise ValueError(f"{image.width}x{image.height} is over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit")
        image.load()
        rgb = _to_rgb(image)
    height, width = rgb.shape[:2]
    bucket = nearest_bucket(table, width, height)
    new_w, new_h, left, top = cover_crop(width, height, bucket.width, bucket.height)
    resized = Image.fromarray(rgb).resize((new_w, new_h), Image.LANCZOS)
    pixels = np.asarray(resized.crop((left, top, left + bucket.width, top + bucket.height)))
    return {"pixels": np.ascontiguousarray(pixels), "original": (width, height), "bucket": bucket.id,
            "crop_offset": (left, top), "frames": None}


# ----------------------------------------------------------------------------------- videos


def frame_count_for(requested: int, four_n_plus_one: bool) -> int:
    """Frames to sample: the request; for families whose VAE takes 4n+1 frames (Wan,
    HunyuanVideo), the largest 4n+1 not above it. Every video gets this many, a shorter one by
    repeating frames (the linspace of `sample_indices` does), so that the items of a bucket share
    one latent length and batch together (AutoModel's dataloaders concatenate them)."""
    count = requested
    if four_n_plus_one:
        count = 1 + 4 * ((count - 1) // 4)
    return max(1, count)


def sample_indices(total: int, count: int) -> np.ndarray:
    """Evenly spaced frame indices, AutoModel's np.linspace(0, total - 1, count).astype(int)."""
    return np.linspace(0, total - 1, count).astype(int)


def _count_frames(path: str) -> int:
    """Frames of the first video stream, counted by demuxing (no decoding): exact for variable
    frame rates and for containers whose header count is missing or wrong."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        count = sum(1 for packet in container.demux(stream) if packet.size)
        declared = stream.frames  # 0 where the container keeps no count (mkv, webm)
    if declared and count < declared - _spare(declared):  # a cut download: its header promises more
        raise ValueError(f"truncated: {count} of the {declared} frames its header lists")
    return count


def _spare(frames: int) -> int:
    """Frames an intact video may lack against its count (edit lists, a last broken packet)."""
    return max(2, frames // 20)


def _decoded_frames(path: str, keep: set[int]):
    """(index, RGB array with display rotation applied) of the kept frames, in presentation order."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = max(keep)
        for index, frame in enumerate(container.decode(stream)):
            if index in keep:
                rgb = frame.to_ndarray(format="rgb24")
                turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
                yield index, (np.rot90(rgb, turns) if turns else rgb)
            if index >= last:
                return


def decode_video(path: str, table: list[Bucket], frames: int, four_n_plus_one: bool) -> dict:
    """`frames` frames sampled evenly over the video, each resized to cover its bucket and
    centre-cropped: uint8 (T, H, W, 3), plus the first frame (for Wan's `first_frame`)."""
    from PIL import Image

    total = _count_frames(path)
    if total == 0:
        raise ValueError("no video frames")
    count = frame_count_for(frames, four_n_plus_one)
    indices = sample_indices(total, count)
    wanted = set(indices.tolist())
    got = dict(_decoded_frames(path, wanted))
    if len(got) < len(wanted):  # fewer decodable frames than packets: resample over what decodes
        decodable = len(dict(_decoded_frames(path, set(range(total)))))
        if decodable == 0:
            raise ValueError("no decodable video frames")
        if decodable < total - _spare(total):  # damaged, not a stray bad packet: never padded out silently
            raise ValueError(f"damaged: {decodable} of its {total} frames decode")
        total = decodable
        indices = sample_indices(total, count)
        got = dict(_decoded_frames(path, set(indices.tolist())))
    height, width = next(iter(got.values())).shape[:2]
    bucket = nearest_bucket(table, width, height)
    new_w, new_h, left, top = cover_crop(width, height, bucket.width, bucket.height)
    box = (left, top, left + bucket.width, top + bucket.height)
    pixels = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(got[i])).resize((new_w, new_h), Image.BILINEAR).crop(box))
                       for i in indices.tolist()])
    return {"pixels": pixels, "original": (width, height), "bucket": bucket.id, "crop_offset": (left, top),
            "frames": int(count), "total_frames": int(total), "frame_indices": indices.tolist()}


# ----------------------------------------------------------------------------------- workers


def decode(task: tuple) -> dict:
    """Worker entry: (index, path, video, table, frames, 4n+1) -> decoded item or {"error": reason}."""
    index, path, video, table, frames, four_n_plus_one = task
    faults.decoder_dies_on(path)  # a codec that crashes the process, or the OOM killer
    try:
        item = decode_video(path, table, frames, four_n_plus_one) if video else decode_image(path, table)
    except Exception as exc:  # any decoder failure is this item's recorded reason
        kind = "undecodable video" if video else "undecodable image"
        return {"index": index, "error": f"{kind} ({type(exc).__name__}: {str(exc)[:160]})"}
    item["index"] = index
    return item


MAX_IMAGE_PIXELS = 1 << 28  # Pillow's bomb guard, raised from 89 MP: real photos pass, a 1 GP bomb does not


def init_worker() -> None:
    import warnings

    from PIL import Image

    from prep.pipeline.processes import die_with_parent

    die_with_parent()  # an encoder process that dies takes its decoders with it
    # Decoders scale by processes; nested thread pools would oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    # Above the limit Pillow raises (the item is recorded as undecodable); below it, no warning per image.
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
