"""docker/Dockerfile and docker/Dockerfile.cuda (no Docker engine runs here): each installs prep
with torch pinned as the Makefile pins it, in the same pip command, with extras that exist, and
`prep` as the entry point; the install they run resolves in a fresh venv (pip --dry-run)."""

import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from helpers import ROOT

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def _pip_command(text: str) -> list[str]:
    runs = [" ".join(r.replace("\\\n", " ").split()) for r in re.findall(r"^RUN (.*?)(?<!\\)$", text, re.M | re.S)]
    pips = [r for r in runs if " install " in r and "pip" in r.split(" install ")[0]]
    assert len(pips) == 1, runs
    return shlex.split(pips[0])


def _makefile_torch() -> str:
    return re.search(r"torch==[\d.]+", (ROOT / "Makefile").read_text()).group(0)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_dockerfile_installs_prep_with_the_makefiles_torch_pin(name):
    text = (ROOT / "docker" / name).read_text()
    words = _pip_command(text)
    assert _makefile_torch() in words  # the same pin, in the same pip command as prep itself
    target = next(w for w in words if w.startswith(".["))
    extras = set(target[2:-1].split(","))
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras <= declared and "latents" in extras
    assert 'ENTRYPOINT ["prep"]' in text
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        assert all((ROOT / s).exists() for s in source.split()), source
    if name == "Dockerfile":
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in " ".join(words)  # the CPU build


@pytest.mark.slow
def test_the_dockerfiles_install_works_in_a_fresh_venv(tmp_path):
    """The CUDA image's pip command (PyPI's torch, from the registry here), run in a fresh venv as
    the image runs it (a copy of the sources, not editable): `prep` is then on its PATH and runs."""
    import shutil

    words = _pip_command((ROOT / "docker" / "Dockerfile.cuda").read_text())
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("prep", "loaders"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    packages = [str(source) + w[1:] if w.startswith(".[") else w for w in words[words.index("install") + 1:] if not w.startswith("--")]
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    result = subprocess.run([tmp_path / "venv" / "bin" / "pip", "install", "-q", *packages], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = subprocess.run([tmp_path / "venv" / "bin" / "prep", "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "tokenize" in shown.stdout and "merge" in shown.stdout
