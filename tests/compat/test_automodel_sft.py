"""loaders.automodel's SFT and NanoGPT targets against NeMo AutoModel's own datasets: prep's offline
chat output (tokenized with --mask-convention automodel) read through loaders.automodel.ChatDataset
gives, item for item, what AutoModel's ChatDataset computes online from the same rows; the same
through AutoModel's make_dataset_config, ParallelAwareDataloader (two ranks), collate functions
and packer; and NanogptDataset gives AutoModel's NanoGPT windows."""

import functools
import json

import numpy as np
import pytest

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders import automodel

chat_dataset = pytest.importorskip("nemo_automodel.components.datasets.llm.chat_dataset")
from chat_cases import CASES, HERE, conversations, tokenizer_dir  # noqa: E402

# template name -> tokenizer folder (its own template unless a file is named) and the rows' features
SETUPS = {
    "smollm2": ("smollm2", None, {"system": True}),
    "llama3.1-tools": ("llama3.1", "llama3.1", CASES["llama3.1"]),
    "deepseek-v3-tools": ("deepseek-v3", None, CASES["deepseek-v3"]),
    # one turn: Qwen3 renders a turn differently once a later user turn exists (AutoModel refuses it too)
    "qwen3-reasoning": ("qwen3", "qwen3", {"system": True, "reasoning": True, "single_turn": True}),
}


def _tokenizer(folder, template: str | None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if template is not None:
        tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=list(SETUPS))
def chat(request, tmp_path_factory):
    """(jsonl, prep output with AutoModel's convention, prep output with prep's, tokenizer, template text)."""
    name, template_name, case = SETUPS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = tokenizer_dir(name, root)
    template = (HERE / f"{template_name}.jinja").read_text() if template_name else None
    corpus = write_jsonl(root / "chat.jsonl", conversations(case, 24, seed=5))
    args = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", folder, "--workers", "2"]
    if template_name:
        args += ["--chat-template", HERE / f"{template_name}.jinja"]
    prep(*args, "-o", root / "am", "--mask-convention", "automodel")
    prep(*args, "-o", root / "prep")
    return corpus, root / "am", root / "prep", _tokenizer(folder, template), template


def _theirs(chat, **options):
    corpus, _, _, tok, template = chat
    return chat_dataset.ChatDataset(str(corpus), tok, chat_template=template, **options)


@pytest.mark.parametrize("options", [{}, {"seq_length": 96, "padding": "max_length", "truncation": True},
                                     {"seq_length": 300, "truncation": True}, {"unshifted": True}],
                         ids=["plain", "pad-truncate", "truncate", "unshifted"])
def test_chat_items_equal_automodels_chat_dataset(chat, options):
    corpus, am, _, tok, _ = chat
    theirs, ours = _theirs(chat, **options), automodel.ChatDataset(path_or_dataset_id=str(am), tokenizer=tok, **options)
    assert len(ours) == len(theirs) == 24
    for i in range(len(theirs)):
        assert ours[i] == theirs[i], i


def test_last_turn_only_is_automodels_mask_history(chat, tmp_path):
    corpus, _, _, tok, template = chat
    folder = tok.name_or_path
    args = ["tokenize", corpus, "-o", tmp_path / "last", "--recipe", "chat", "--tokenizer", folder,
            "--mask-convention", "automodel", "--last-turn-only"]
    if template:
        (tmp_path / "t.jinja").write_text(template)
        args += ["--chat-template", tmp_path / "t.jinja"]
    prep(*args)
    theirs = _theirs(chat, mask_history=True)
    ours = automodel.ChatDataset(path_or_dataset_id=str(tmp_path / "last"), tokenizer=tok, mask_history=True)
    assert [ours[i] for i in range(len(ours))] == [theirs[i] for i in range(len(theirs))]
    with pytest.raises(ValueError, match="tokenized with --last-turn-only"):
        automodel.ChatDataset(str(tmp_path / "last"), tokenizer=tok, mask_history=False)


def test_prep_convention_has_automodels_ids_and_trains_a_subset(chat):
    """prep's own convention (the default) keeps AutoModel's input_ids and trains, of each turn, what
    the model generates: AutoModel's labels less the role header and the newline after the end of turn.
    (Rows with tool calls differ in ids too: AutoModel serialises object arguments to a string first.)"""
    corpus, am, own, tok, _ = chat
    ours, theirs = automodel.ChatDataset(str(own), tokenizer=tok), automodel.ChatDataset(str(am), tokenizer=tok)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    fewer = 0
    for i in range(len(theirs)):
        if "tools" in rows[i]:
            continue
        a, b = ours[i], theirs[i]
        assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"]
        assert all(x == -100 or x == y for x, y in zip(a["labels"], b["labels"]))  # trained here => trained there
        fewer += sum(x == -100 and y != -100 for x, y in zip(a["labels"], b["labels"]))
    assert fewer > 0


def test_through_automodels_config_loader_collate_and_packer(chat):
    """The YAML block resolved by AutoModel's make_dataset_config, in its ParallelAwareDataloader with
    two data-parallel ranks and default_collater(pad_seq_len_divisible); and AutoModel's pack_dataset
    over both datasets with its THD collater: the same batches."""
    import multiprocessing

    import torch
    from nemo_automodel.components.datasets.llm.packed_sequence import pack_dataset
    from nemo_automodel.components.datasets.loader import ParallelAwareDataloader, make_dataset_config
    from nemo_automodel.components.datasets.utils import default_collater, packed_sequence_thd_collater

    multiprocessing.get_start_method()
    _, am, _, tok, _ = chat
    ours = make_dataset_config("loaders.automodel.ChatDataset", {"path_or_dataset_id": str(am)}).build(tokenizer=tok)
    theirs = _theirs(chat)
    for rank in range(2):
        batches = [list(ParallelAwareDataloader(d, dp_rank=rank, dp_world_size=2, batch_size=3, seed=7,
                                                collate_fn=functools.partial(default_collater, pad_seq_len_divisible=16)))
                   for d in (ours, theirs)]
        assert len(batches[0]) == len(batches[1]) == 24 // 2 // 3
        for got, want in zip(*batches):
            assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    packs = [pack_dataset([d[i] for i in range(len(d))], "train", 1024, padding_idx=tok.pad_token_id or 0) for d in (ours, theirs)]
    assert len(packs[0]) == len(packs[1]) > 1
    for a, b in zip(packed_sequence_thd_collater([packs[0][i] for i in range(len(packs[0]))]).items(),
                    packed_sequence_thd_collater([packs[1][i] for i in range(len(packs[1]))]).items()):
        assert a[0] == b[0] and (torch.equal(a[1], b[1]) if isinstance(a[1], torch.Tensor) else a[1] == b[1])


def test_tokenize_time_options_and_other_outputs_are_one_clear_error(chat, tmp_path):
    _, am, _, tok, _ = chat
    with pytest.raises(TypeError, match="chat_template .*decided when it tokenized"):
        automodel.ChatDataset(str(am), tokenizer=tok, chat_template="{{ x }}")
    with pytest.raises(TypeError, match=r"unknown or unsupported argument\(s\) \['colour'\]"):
        automodel.ChatDataset(str(am), tokenizer=tok, colour=1)
    text = tmp_path / "text"
    prep("tokenize", write_jsonl(tmp_path / "t.jsonl", botchan_documents(20)), "-o", text, "--tokenizer", TOKENIZERS / "gpt2")
    with pytest.raises(ValueError, match="not a prep chat output"):
        automodel.ChatDataset(str(text))


@pytest.mark.parametrize("align", [False, True])
def test_nanogpt_dataset_equals_automodels_windows(tmp_path, align):
    from nemo_automodel.components.datasets.llm.nanogpt_dataset import NanogptDataset

    corpus = write_jsonl(tmp_path / "b.jsonl", botchan_documents(300, seed=2))
    out = tmp_path / "nano"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--format", "nanogpt", "--shard-tokens", "20k")
    shards = sorted(str(p) for p in out.glob("text_*.bin"))
    assert len(shards) > 2
    bos = json.loads((out / "manifest.json").read_text())["tokenizer"]["bos_id"]
    ours = automodel.NanogptDataset(str(out), 64, align_to_bos=align)
    glob_ours = automodel.NanogptDataset(str(out / "text_*.bin"), 64, bos_token=bos, align_to_bos=align)
    stream = iter(NanogptDataset(str(out / "text_*.bin"), 64, bos_token=bos, align_to_bos=align))
    theirs = [next(stream) for _ in range(len(ours))]
    assert len(ours) == len(glob_ours) > 100
    assert [ours[i] for i in range(len(ours))] == theirs == [glob_ours[i] for i in range(len(glob_ours))]
    assert next(stream) == theirs[0]  # AutoModel's reader starts its second pass: ours was exactly one pass
    assert np.asarray(theirs[0]["input_ids"]).dtype == np.int64


def test_nanogpt_sft_shards_give_masked_labels(tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", conversations({"system": True}, 20))
    out = tmp_path / "nano"
    prep("tokenize", corpus, "-o", out, "--recipe", "chat", "--tokenizer", tokenizer_dir("smollm2", tmp_path), "--format", "nanogpt")
    items = automodel.NanogptDataset(str(out), 48)
    labels = [label for i in range(len(items)) for label in items[i]["labels"]]
    assert -100 in labels and any(label != -100 for label in labels)


def test_the_example_configs_dataset_blocks_build(tmp_path):
    """examples/automodel's dataset blocks, their paths pointed at real outputs, build through
    AutoModel's make_dataset_config (as its recipes resolve them)."""
    import yaml
    from nemo_automodel.components.datasets.loader import make_dataset_config
    from transformers import AutoTokenizer

    from helpers import ROOT

    folder = tokenizer_dir("smollm2", tmp_path)
    chats = write_jsonl(tmp_path / "chat.jsonl", conversations({"system": True}, 10))
    prep("tokenize", chats, "-o", tmp_path / "sft", "--recipe", "chat", "--tokenizer", folder, "--mask-convention", "automodel")
    prep("tokenize", write_jsonl(tmp_path / "t.jsonl", botchan_documents(200)), "-o", tmp_path / "nano",
         "--tokenizer", TOKENIZERS / "gpt2", "--format", "nanogpt")
    tok = AutoTokenizer.from_pretrained(str(folder))
    for name, out, key in (("chat_sft_packed.yaml", tmp_path / "sft", "path_or_dataset_id"),
                           ("nanogpt_pretrain_dataset.yaml", tmp_path / "nano", "file_pattern")):
        config = yaml.safe_load((ROOT / "examples" / "automodel" / name).read_text())
        for block in [b for b in ("dataset", "validation_dataset") if b in config]:
            kwargs = {k: v for k, v in config[block].items() if k != "_target_"}
            kwargs[key] = str(out)
            built = make_dataset_config(config[block]["_target_"], kwargs).build(tokenizer=tok)
            assert len(built) > 0 and "input_ids" in built[0] and "labels" in built[0]


@pytest.mark.parametrize("tokenizer", ["gpt2", "llama3", "smollm2-135m-instruct"])
def test_instruction_items_equal_automodels_column_mapped_dataset(tmp_path, tokenizer):
    """--recipe instruction --mask-convention automodel read through
    loaders.automodel.ColumnMappedTextInstructionDataset: AutoModel's prompt-completion items
    (tokenizer(prompt + answer) with its post-processor's tokens, trained from the prompt's own
    token count) for the same rows."""
    from nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset import ColumnMappedTextInstructionDataset
    from transformers import AutoTokenizer

    from chat_cases import LINES

    rows = [{"doc": LINES[i * 3].strip() or "Botchan.", "q": f"What is line {i} about?", "a": LINES[i * 3 + 1].strip() + " 日本"}
            for i in range(1, 40)]
    rows[7]["doc"] = " ".join(LINES[40:60])  # cut at seq_length 40 below, nothing of it is trained
    rows[12]["a"] = ""  # nothing to train (without a post-processor's EOS): AutoModel gives the next row instead
    corpus = write_jsonl(tmp_path / "inst.jsonl", rows)
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "instruction", "--columns", "context=doc,question=q,answer=a",
         "--tokenizer", TOKENIZERS / tokenizer, "--mask-convention", "automodel")
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / tokenizer))
    theirs = ColumnMappedTextInstructionDataset(str(corpus), {"context": "doc", "question": "q", "answer": "a"}, tok)
    ours = automodel.ColumnMappedTextInstructionDataset(str(tmp_path / "out"), tokenizer=tok, answer_only_loss_mask=True)
    assert len(ours) == len(theirs) == len(rows)
    for i in range(len(rows)):
        assert ours[i] == theirs[i], i
    cut = dict(seq_length=40, padding="max_length", truncation=True)
    theirs = ColumnMappedTextInstructionDataset(str(corpus), {"context": "doc", "question": "q", "answer": "a"}, tok, **cut)
    ours = automodel.ColumnMappedTextInstructionDataset(str(tmp_path / "out"), tokenizer=tok, answer_only_loss_mask=True, **cut)
    assert [ours[i] for i in range(len(rows))] == [theirs[i] for i in range(len(rows))]
    assert ours[7] == ours[8]  # the long row's item is the next one's, as AutoModel's
