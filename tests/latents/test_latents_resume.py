"""Resume after a kill, Slurm slices, fingerprint refusal, and prep verify on latent caches."""

import json
import re
import shutil
from pathlib import Path

import pytest

from prep.latents.verify import verify
from latent_helpers import *  # noqa: F401,F403
from latent_helpers import IMAGES, cache_bytes, captioned_copies, latents_cli

pytestmark = pytest.mark.slow

SOURCES = [IMAGES / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
                                "page.png", "retina.jpg", "rocket.jpg")]
OPTIONS = ["--family", "flux", "--preset", "256p", "--batch-size", "2", "--unit-items", "3", "--max-pixels", "32768"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return captioned_copies(tmp_path_factory.mktemp("resume_in"), SOURCES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, tiny_flux):
    out = tmp_path_factory.mktemp("reference") / "cache"
    latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS)
    return out


def _this_run(stdout: str) -> int:
    return int(re.search(r"this run\s+(\d+) items", stdout).group(1))


def _relocated(data: dict[str, bytes], old, new) -> dict[str, bytes]:
    # metadata shards hold absolute paths: compare them with the folder name swapped
    return {k: v.replace(str(old).encode(), str(new).encode()) if k.endswith(".json") else v for k, v in data.items()}


def test_resume_after_kill_encodes_each_item_once_and_gives_identical_cache(tmp_path, inputs, tiny_flux, reference):
    out = tmp_path / "cache"
    killed = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS, check=False, env={"PREP_TEST_CRASH_AFTER_BATCHES": "3"})
    assert killed.returncode == 70 and not (out / "manifest.json").exists()
    encoded_before = len(list(out.glob("*x*/*.pt")))
    assert 3 <= encoded_before < len(SOURCES)
    resumed = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS)
    # exactly the items not committed before the kill ran again: none twice, none lost
    assert _this_run(resumed.stdout) == len(SOURCES) - encoded_before
    assert _relocated(cache_bytes(reference), reference, out) == cache_bytes(out)
    assert verify(out) == []


def test_slurm_array_tasks_then_rerun_finalizes_the_same_cache(tmp_path, inputs, tiny_flux, reference):
    out = tmp_path / "cache"
    for task in ("0/2", "1/2"):
        result = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS, "--task", task)
        assert "when every task is done" in result.stderr and not (out / "manifest.json").exists()
    final = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS)
    assert "manifest" in final.stdout
    assert _relocated(cache_bytes(reference), reference, out) == cache_bytes(out)


def test_two_encoder_processes_share_units_and_give_the_same_cache(tmp_path, inputs, tiny_flux, reference):
    """The multi-GPU path (one spawned encoder process per device, work stealing) on two CPUs."""
    out = tmp_path / "cache"
    result = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS, "--device", "cpu,cpu", "--decode-workers", "1")
    assert "2 GPUs" not in result.stderr and _this_run(result.stdout) == len(SOURCES)
    assert _relocated(cache_bytes(reference), reference, out) == cache_bytes(out)


def test_a_dead_encoder_process_stops_the_run_and_a_rerun_resumes(tmp_path, inputs, tiny_flux, reference):
    """An encoder process that dies without a word (killed, out of memory) stops the run with one
    line instead of leaving it waiting forever; the rerun finishes the same cache."""
    out = tmp_path / "cache"
    args = [inputs, "-o", out, "--model", tiny_flux, *OPTIONS, "--device", "cpu,cpu", "--decode-workers", "1"]
    died = latents_cli(*args, check=False, env={"PREP_TEST_CRASH_AFTER_BATCHES": "1"})
    assert died.returncode == 2 and "Traceback" not in died.stderr
    assert "the encoder process died (exit code 70" in died.stderr.strip().splitlines()[-1]
    assert not (out / "manifest.json").exists()
    latents_cli(*args)
    assert _relocated(cache_bytes(reference), reference, out) == cache_bytes(out)


def test_a_decoder_that_dies_on_a_file_makes_that_file_a_bad_item(tmp_path, inputs, tiny_flux):
    """A decode worker killed by one file (a codec crash, the OOM killer) fails every item in
    flight; the file that kills it is found and is a bad item (one line, or skipped and
    counted), the other items are encoded: no hang, nothing dropped silently."""
    dies = {"PREP_TEST_DECODER_DIES_ON": "coffee"}
    stopped = latents_cli(inputs, "-o", tmp_path / "strict", "--model", tiny_flux, *OPTIONS, check=False, env=dies)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert "coffee" in last and "decoder process died on it" in last
    out = tmp_path / "cache"
    latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS, "--skip-invalid", env=dies)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"decoder process died on it": 1}
    assert "coffee" in manifest["stats"]["skipped_examples"][0]
    assert manifest["stats"]["items"] == len(SOURCES) - 1 and verify(out) == []


def test_a_run_that_committed_nothing_does_not_block_the_fixed_rerun(tmp_path, inputs, tiny_flux):
    """Weights cut short (an unfinished download): the run stops before its first batch. With
    the weights put right, the same command runs; it is not refused as 'other weights'."""
    model = tmp_path / "model"
    shutil.copytree(tiny_flux, model)
    weights = next((model / "vae").glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    out = tmp_path / "cache"
    broken = latents_cli(inputs, "-o", out, "--model", model, *OPTIONS, check=False, env={"PYTHONUNBUFFERED": "1"})
    assert broken.returncode != 0 and not (out / "manifest.json").exists()
    weights.write_bytes(good)
    fixed = latents_cli(inputs, "-o", out, "--model", model, *OPTIONS)
    assert "committed nothing; starting afresh" in fixed.stderr and verify(out) == []
    assert json.loads((out / "manifest.json").read_text())["stats"]["items"] == len(SOURCES)


def test_other_weights_refused_on_resume_and_flagged_by_verify(tmp_path, inputs, tiny_flux, reference):
    model = tmp_path / "model"
    shutil.copytree(tiny_flux, model)
    out = tmp_path / "cache"
    latents_cli(inputs, "-o", out, "--model", model, *OPTIONS, check=False, env={"PREP_TEST_CRASH_AFTER_BATCHES": "1"})
    config = json.loads((model / "vae" / "config.json").read_text())
    config["scaling_factor"] = 0.5  # other VAE settings: another fingerprint
    (model / "vae" / "config.json").write_text(json.dumps(config))
    refused = latents_cli(inputs, "-o", out, "--model", model, *OPTIONS, check=False)
    assert refused.returncode == 2 and "other weights or settings" in refused.stderr and "Traceback" not in refused.stderr
    other = latents_cli(inputs, "-o", out, "--model", model, *OPTIONS[:-2], "--max-pixels", "65536", check=False)
    assert other.returncode == 2 and "--overwrite" in other.stderr
    latents_cli(inputs, "-o", out, "--model", model, *OPTIONS, "--overwrite")
    assert verify(out) == []
    weights = next((model / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    problems = verify(out)
    assert len(problems) == 1 and "vae" in problems[0] and "other weights" in problems[0]


def test_inspect_describes_a_latent_cache(reference):
    from helpers import prep

    described = prep("inspect", reference).stdout
    assert "latents / automodel (flux)" in described and "vae " in described
    assert f"items       {len(json.loads((reference / 'metadata_shard_0000.json').read_text()))}" in described


def test_verify_flags_a_changed_item_file(tmp_path, reference):
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    assert verify(out) == []
    item = next(out.glob("*x*/*.pt"))
    item.write_bytes(item.read_bytes() + b"\0")
    problems = verify(out)
    assert len(problems) == 1 and item.name in problems[0]


def test_verify_flags_a_broken_metadata_json_and_stray_item_files(tmp_path, reference):
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    metadata = json.loads((out / "metadata.json").read_text())
    (out / "metadata.json").write_text(json.dumps({**metadata, "shards": []}))
    assert [p for p in verify(out) if "metadata.json" in p and "shards" in p]
    (out / "metadata.json").unlink()
    problems = verify(out)
    assert len(problems) == 1 and "metadata.json" in problems[0]
    (out / "metadata.json").write_text(json.dumps(metadata))
    assert verify(out) == []
    item = next(out.glob("*x*/*.pt"))
    shutil.copyfile(item, item.with_name("left-over.pt"))
    problems = verify(out)
    assert len(problems) == 1 and "left-over.pt" in problems[0] and "no metadata shard lists" in problems[0]
    item.with_name("left-over.pt").unlink()
    (out / "4096x4096").mkdir()  # a bucket folder this cache does not use
    shutil.copyfile(item, out / "4096x4096" / "other.pt")
    problems = verify(out)
    assert len(problems) == 1 and "4096x4096/other.pt" in problems[0]


def test_a_second_run_into_a_busy_cache_stops_with_one_line(tmp_path, inputs, tiny_flux):
    from prep.pipeline.workdir import output_lock

    out = tmp_path / "cache"
    with output_lock(out):  # as a first run of the same command holds it (a lock is per process: env= runs another)
        busy = latents_cli(inputs, "-o", out, "--model", tiny_flux, *OPTIONS, check=False, env={"PYTHONUNBUFFERED": "1"})
    assert busy.returncode == 2 and "another prep run is writing this output now" in busy.stderr
    assert "Traceback" not in busy.stderr and not out.exists()


def test_a_finished_cache_is_not_taken_as_complete_for_other_inputs(tmp_path, reference, tiny_flux):
    """Same models and settings, but an image added or a caption changed since: refused, not
    'already complete' with a stale cache; the same inputs are still a no-op."""
    folder = captioned_copies(tmp_path / "in", SOURCES[:2])
    out = tmp_path / "cache"
    latents_cli(folder, "-o", out, "--model", tiny_flux, *OPTIONS)
    again = latents_cli(folder, "-o", out, "--model", tiny_flux, *OPTIONS)
    assert _this_run(again.stdout) == 0 if "this run" in again.stdout else "complete" in again.stdout + again.stderr
    (folder / "chelsea.txt").write_text("another caption")
    changed = latents_cli(folder, "-o", out, "--model", tiny_flux, *OPTIONS, check=False)
    assert changed.returncode == 2 and "inputs or captions changed" in changed.stderr and "Traceback" not in changed.stderr
    latents_cli(folder, "-o", out, "--model", tiny_flux, *OPTIONS, "--overwrite")
    assert verify(out) == []


def test_undecodable_caption_and_unusable_device_are_one_line_errors(tmp_path, tiny_flux):
    folder = captioned_copies(tmp_path / "in", SOURCES[:1])
    (folder / "astronaut.txt").write_bytes(b"caf\xe9 cr\xe8me")  # Latin-1, not UTF-8
    bad = latents_cli(folder, "-o", tmp_path / "a", "--model", tiny_flux, *OPTIONS, check=False)
    assert bad.returncode == 2 and "astronaut.txt" in bad.stderr and "UTF-8" in bad.stderr
    (folder / "astronaut.txt").write_text("fine")
    import torch

    for device in ("banana", *([] if torch.cuda.is_available() else ["cuda:0"])):
        result = latents_cli(folder, "-o", tmp_path / device, "--model", tiny_flux, *OPTIONS, "--device", device, check=False)
        assert result.returncode == 2 and f"--device {device}" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / device).exists()  # nothing written that would block a retry on another device


def test_an_empty_caption_is_a_bad_item_unless_allowed(tmp_path, tiny_flux):
    folder = captioned_copies(tmp_path / "in", SOURCES[:2])
    (folder / "astronaut.txt").write_text(" \n")
    bad = latents_cli(folder, "-o", tmp_path / "a", "--model", tiny_flux, *OPTIONS, check=False)
    assert bad.returncode == 2 and "astronaut" in bad.stderr and "empty caption" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    latents_cli(folder, "-o", tmp_path / "skip", "--model", tiny_flux, *OPTIONS, "--skip-invalid")
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"empty caption": 1} and manifest["stats"]["items"] == 1
    latents_cli(folder, "-o", tmp_path / "kept", "--model", tiny_flux, *OPTIONS, "--allow-empty-captions")
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["stats"]["items"] == 2
    # the skipping cache rerun keeping empty captions would hold another item set: refused, not "complete"
    rerun = latents_cli(folder, "-o", tmp_path / "skip", "--model", tiny_flux, *OPTIONS, "--skip-invalid",
                        "--allow-empty-captions", check=False)
    assert rerun.returncode == 2 and "other weights or settings" in rerun.stderr


def test_verify_reads_a_manifest_that_names_the_encoders_by_the_old_key(tmp_path, reference):
    """Caches made before the manifest's `encoders` field held them under `tokenizer`: they still
    verify (weights rehashed), and a changed weights hash under the old key is still caught."""
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tokenizer"] = manifest.pop("encoders")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify(out) == []
    manifest["tokenizer"]["vae"]["xxh3_128"] = "0" * 32
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any("vae" in p and "other weights" in p for p in verify(out))


def test_verify_flags_an_item_without_its_familys_fields(tmp_path, reference):
    """An item file that loads and matches its checksums but lacks a field AutoModel's FLUX
    adapter reads (here `prompt_embeds`, rewritten with consistent checksums) is a problem."""
    import io

    import torch
    import xxhash

    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    shard_path = out / "metadata_shard_0000.json"
    entries = json.loads(shard_path.read_text())
    item = out.joinpath(*Path(entries[0]["cache_file"]).parts[-2:])
    data = torch.load(item, weights_only=True)
    del data["prompt_embeds"]
    buffer = io.BytesIO()
    torch.save(data, buffer)
    item.write_bytes(buffer.getvalue())
    entries[0].update(bytes=len(buffer.getvalue()), xxh64=xxhash.xxh64_hexdigest(buffer.getvalue()))
    shard = json.dumps(entries, indent=1).encode()
    shard_path.write_bytes(shard)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["datasets"]["latents"]["shards"][0].update(bytes=len(shard), xxh64=xxhash.xxh64_hexdigest(shard))
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify(out) == [f"{item}: lacks the family's field(s) prompt_embeds"]
