"""`prep inspect OUT --plot FILE.png`: a PNG of the length histogram (with the packing efficiency
of a packed SFT output); without matplotlib, one line saying how to install it."""

from chat_cases import TEMPLATES, conversations
from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_text_output_plots_its_length_histogram(tmp_path):
    corpus = write_jsonl(tmp_path / "t.jsonl", botchan_documents(300))
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    result = prep("inspect", tmp_path / "out", "--plot", tmp_path / "plots" / "lengths.png")
    assert f"plot {tmp_path / 'plots' / 'lengths.png'}: documents length histogram" in result.stdout
    data = (tmp_path / "plots" / "lengths.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_a_packed_sft_output_plots_its_packing(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", conversations({"system": True}, 60))
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"], "--pack", "2048")
    result = prep("inspect", tmp_path / "out", "--plot", tmp_path / "p.png")
    assert "samples length histogram and packing efficiency" in result.stdout and (tmp_path / "p.png").read_bytes().startswith(PNG)


def test_without_matplotlib_it_is_one_line_naming_the_extra(tmp_path):
    corpus = write_jsonl(tmp_path / "t.jsonl", botchan_documents(20))
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    result = prep("inspect", tmp_path / "out", "--plot", tmp_path / "p.png", check=False, env={"PYTHONPATH": str(shim.parent)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --plot needs matplotlib, an optional extra: pip install 'prep[plot]' (or pip install matplotlib)"]
    assert not (tmp_path / "p.png").exists()
