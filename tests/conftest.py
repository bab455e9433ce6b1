"""Session fixtures shared by every test folder; helpers (functions) are in tests/helpers.py."""

import os
from pathlib import Path

import pytest

from helpers import botchan_documents, write_jsonl


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # One resolved-tokenizer cache for the session: the first test pays transformers' import.
    os.environ["PREP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 2 MB of real text in 3,000 documents."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", botchan_documents(3000))


def pytest_collection_modifyitems(config, items):
    """gpu tests skip where no CUDA device is visible (they import and run on a GPU task's machine)."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
