"""loaders.automodel's HellaSwag, make_squad_dataset and retrieval targets against NeMo AutoModel's
own datasets on the same raw rows: item for item, and batch for batch through AutoModel's
make_dataset_config / make_collate_fn / DataloaderConfig on two data-parallel ranks."""

import pytest

from helpers import TOKENIZERS, assert_same_batches, prep, write_jsonl
from loaders import automodel

loader = pytest.importorskip("nemo_automodel.components.datasets.loader")
from chat_cases import LINES, TEMPLATES  # noqa: E402
from retrieval_data import bos_eos_tokenizer, write_corpus_id, write_inline  # noqa: E402

HELLASWAG = "nemo_automodel.components.datasets.llm.hellaswag:HellaSwag"


@pytest.fixture(autouse=True)
def _offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return {"gpt2": TOKENIZERS / "gpt2", "smollm2": TOKENIZERS / "smollm2-135m-instruct",
            "llama3-bos-eos": bos_eos_tokenizer(tmp_path_factory.mktemp("toks")), "deepseek": TEMPLATES["deepseek"]}


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _line(i: int) -> str:
    return LINES[(i * 7) % len(LINES)].strip() or "He said nothing"


def _batches(target, kwargs, tok, collate=None, rank=0, batch_size=4):
    config = loader.DataloaderConfig(dataset_config=loader.make_dataset_config(target, kwargs), batch_size=batch_size,
                                     shuffle=True, seed=7, collate_fn=loader.make_collate_fn(*collate) if collate else None)
    return list(config.build(dp_rank=rank, dp_world_size=2, tokenizer=tok))


def hellaswag_rows(n: int = 37) -> list[dict]:
    """HellaSwag's schema on real text: contexts ending mid-sentence, endings with and without a
    leading space (AutoModel tokenizes the two apart, so no space is added), the gold one by label."""
    rows = []
    for i in range(n):
        endings = [("" if i % 3 else " ") + _line(i + k + 1)[: 20 + 7 * k] for k in range(4)]
        rows.append({"ind": i, "activity_label": "Botchan", "ctx": _line(i)[: 30 + i % 40], "endings": endings,
                     "label": str(i % 4), "gold": endings[i % 4]})
    return rows


@pytest.mark.parametrize("tokenizer", ["gpt2", "smollm2", "llama3-bos-eos", "deepseek"])
def test_hellaswag_items_equal_automodels(tmp_path, tokenizers, tokenizer):
    """AutoModel's own HellaSwag class named as the recipe (its get_context / get_target), and the
    built-in completion recipe over the gold column, both with --mask-convention automodel: the
    items of AutoModel's HellaSwag (SFTSingleTurnPreprocessor), padded or not, limited or not."""
    from nemo_automodel.components.datasets.llm.hellaswag import HellaSwag

    raw = tmp_path / "raw"
    raw.mkdir()
    corpus = write_jsonl(raw / "train.jsonl", hellaswag_rows())
    tok = _tok(tokenizers[tokenizer])
    common = ["--tokenizer", tokenizers[tokenizer], "--mask-convention", "automodel"]
    prep("tokenize", corpus, "-o", tmp_path / "own", "--recipe", HELLASWAG, *common)
    prep("tokenize", corpus, "-o", tmp_path / "cols", "--recipe", "completion", "--columns", "context=ctx,answer=gold", *common)
    for options in ({}, {"num_samples_limit": 9}, {"pad_to_max_length": False}):
        theirs = HellaSwag(str(raw), tok, **options)
        for out in ("own", "cols"):
            ours = automodel.HellaSwag(str(tmp_path / out), tokenizer=tok, **options)
            assert len(ours) == len(theirs)
            for i in range(len(theirs)):
                assert ours[i] == dict(theirs[i]), (out, options, i)
    kwargs = {"path_or_dataset": str(raw)}
    theirs = _batches("nemo_automodel.components.datasets.llm.hellaswag.HellaSwag", kwargs, tok, rank=1)
    assert_same_batches(_batches("loaders.automodel.HellaSwag", {"path_or_dataset": str(tmp_path / "own")}, tok, rank=1), theirs)


def test_hellaswag_refuses_outputs_made_otherwise(tmp_path, tokenizers):
    corpus = write_jsonl(tmp_path / "raw.jsonl", hellaswag_rows(5))
    prep("tokenize", corpus, "-o", tmp_path / "prep", "--recipe", "completion", "--columns", "context=ctx,answer=gold",
         "--tokenizer", tokenizers["gpt2"])
    with pytest.raises(ValueError, match="not made the way AutoModel's HellaSwag tokenizes"):
        automodel.HellaSwag(str(tmp_path / "prep"))


def squad_rows(n: int = 31) -> list[dict]:
    """SQuAD's schema: `answers` {"text", "answer_start"} (the first text, stripped), some empty."""
    rows = []
    for i in range(n):
        context = " ".join(_line(i + k) for k in range(3))
        answer = context.split()[i % 5] if context.split() else "yes"
        answers = {"text": [f" {answer} ", "other"], "answer_start": [0, 1]} if i % 6 else {"text": [], "answer_start": []}
        rows.append({"id": str(i), "title": "Botchan", "context": context, "question": f"Which word is number {i % 5}?",
                     "answers": answers})
    return rows


@pytest.mark.parametrize("tokenizer,templated", [("gpt2", False), ("smollm2", True), ("llama3-bos-eos", True)])
def test_squad_items_equal_automodels(tmp_path, tokenizers, tokenizer, templated):
    """--recipe instruction --preset squad on SQuAD's own rows (its columns by default), with
    --use-chat-template exactly when the tokenizer has a template (AutoModel's SQuAD then uses it)."""
    from nemo_automodel.components.datasets.llm.squad import make_squad_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "train.jsonl", squad_rows())
    tok = _tok(tokenizers[tokenizer])
    assert bool(tok.chat_template) == templated
    prep("tokenize", raw / "train.jsonl", "-o", tmp_path / "out", "--recipe", "instruction", "--preset", "squad",
         "--mask-convention", "automodel", "--tokenizer", tokenizers[tokenizer], *(["--use-chat-template"] if templated else []))
    for options in ({}, {"limit_dataset_samples": 8}, {"seq_length": 48, "padding": "max_length", "truncation": True}):
        theirs = make_squad_dataset(tok, dataset_name=str(raw), **options)
        ours = automodel.make_squad_dataset(tok, dataset_name=str(tmp_path / "out"), **options)
        assert len(ours) == len(theirs)
        for i in range(len(theirs)):
            assert ours[i] == dict(theirs[i]), (options, i)
    block = {"seq_length": 64, "padding": "max_length", "truncation": True}
    theirs = _batches("nemo_automodel.components.datasets.llm.squad.make_squad_dataset", {"dataset_name": str(raw), **block}, tok)
    assert_same_batches(_batches("loaders.automodel.make_squad_dataset", {"dataset_name": str(tmp_path / "out"), **block}, tok), theirs)


def test_squad_refuses_a_template_mismatch(tmp_path, tokenizers):
    raw = write_jsonl(tmp_path / "train.jsonl", squad_rows(5))
    prep("tokenize", raw, "-o", tmp_path / "out", "--recipe", "instruction", "--preset", "squad", "--mask-convention", "automodel",
         "--tokenizer", tokenizers["smollm2"])
    with pytest.raises(ValueError, match="renders with the tokenizer's chat template, but prep tokenized without"):
        automodel.make_squad_dataset(_tok(tokenizers["smollm2"]), dataset_name=str(tmp_path / "out"))


RETRIEVAL_CASES = [  # schema, tokenizer, dataset block, collator block
    ("inline", "smollm2", {"n_passages": 5}, {"q_max_len": 512, "p_max_len": 512, "query_prefix": "query:",
                                               "passage_prefix": "passage:", "pad_to_multiple_of": 8}),
    ("inline", "llama3-bos-eos", {"n_passages": 3, "max_train_samples": 17, "train_data_select_offset": 3, "do_shuffle": True},
     {"q_max_len": 16, "p_max_len": 24}),
    ("corpus_id", "llama3-bos-eos", {"n_passages": 4, "use_dataset_instruction": True},
     {"q_max_len": 20, "p_max_len": 30, "use_dataset_instruction": True, "pad_to_multiple_of": 4}),
    ("corpus_id", "smollm2", {"n_passages": 2, "data_type": "eval", "eval_negative_size": 3}, {"q_max_len": 64, "p_max_len": 64}),
]


@pytest.mark.parametrize("schema,tokenizer,dataset,collator", RETRIEVAL_CASES)
def test_retrieval_targets_through_automodels_loader(tmp_path, tokenizers, schema, tokenizer, dataset, collator):
    """RetrievalDatasetConfig + BiEncoderCollator resolved as AutoModel resolves YAML targets:
    the config carries `n_passages` for the recipe, and the batches on each of two ranks equal
    those of AutoModel's make_retrieval_dataset + BiEncoderCollator."""
    corpus = (write_inline if schema == "inline" else write_corpus_id)(tmp_path / "raw")
    flags = ["--use-dataset-instruction"] if collator.get("use_dataset_instruction") else \
        ["--query-prefix", collator.get("query_prefix", ""), "--passage-prefix", collator.get("passage_prefix", "")]
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "retrieval", "--tokenizer", tokenizers[tokenizer], *flags)
    tok = _tok(tokenizers[tokenizer])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as AutoModel's bi-encoder recipe does
    ours_config = loader.make_dataset_config("loaders.automodel.RetrievalDatasetConfig",
                                             {"data_dir_list": [str(tmp_path / "out")], **dataset})
    assert ours_config.n_passages == dataset["n_passages"]  # what the recipe reads off the config
    for rank in (0, 1):
        theirs = _batches("nemo_automodel.components.datasets.llm.retrieval_dataset.make_retrieval_dataset",
                          {"data_dir_list": [str(corpus)], **dataset}, tok,
                          ("nemo_automodel.components.datasets.llm.retrieval_collator.BiEncoderCollator", collator), rank)
        ours = _batches("loaders.automodel.make_retrieval_dataset", {"data_dir_list": [str(tmp_path / "out")], **dataset}, tok,
                        ("loaders.automodel.BiEncoderCollator", collator), rank)
        assert_same_batches(ours, theirs)


def test_retrieval_collator_refuses_other_prefixes(tmp_path, tokenizers):
    corpus = write_inline(tmp_path / "raw")
    prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", "retrieval", "--tokenizer", tokenizers["smollm2"],
         "--query-prefix", "query:")
    items = automodel.RetrievalDatasetConfig(data_dir_list=str(tmp_path / "out"), n_passages=2).build()
    collate = automodel.BiEncoderCollator(_tok(tokenizers["smollm2"]), query_prefix="search_query:")
    with pytest.raises(ValueError, match="query_prefix='search_query:'.*tokenized with 'query:'"):
        collate([items[0]])


def test_the_example_configs_build(tmp_path, tokenizers):
    """examples/automodel's SQuAD, HellaSwag, retrieval and Megatron blocks, their paths pointed at
    real outputs, resolve and build as AutoModel's recipes resolve them (the Megatron one with a
    training schedule, the retrieval collator with the tokenizer) and give batches."""
    import yaml
    from nemo_automodel.components.datasets.utils import default_collater

    from helpers import ROOT, botchan_documents

    tok = _tok(tokenizers["gpt2"])
    tok.pad_token = tok.eos_token
    prep("tokenize", write_jsonl(tmp_path / "squad.jsonl", squad_rows(70)), "-o", tmp_path / "squad", "--recipe", "instruction",
         "--preset", "squad", "--mask-convention", "automodel", "--tokenizer", tokenizers["gpt2"])
    prep("tokenize", write_jsonl(tmp_path / "hs.jsonl", hellaswag_rows(10)), "-o", tmp_path / "hs", "--recipe", HELLASWAG,
         "--mask-convention", "automodel", "--tokenizer", tokenizers["gpt2"])
    prep("tokenize", write_inline(tmp_path / "retr-raw"), "-o", tmp_path / "retr", "--recipe", "retrieval", "--tokenizer",
         tokenizers["gpt2"], "--query-prefix", "query:", "--passage-prefix", "passage:")
    prep("tokenize", write_jsonl(tmp_path / "text.jsonl", botchan_documents(300)), "-o", tmp_path / "text",
         "--tokenizer", tokenizers["gpt2"])
    paths = {"squad_sft.yaml": ("dataset_name", tmp_path / "squad"), "hellaswag_sft.yaml": ("path_or_dataset", tmp_path / "hs"),
             "retrieval_bi_encoder.yaml": ("data_dir_list", [str(tmp_path / "retr")]),
             "megatron_pretrain_dataset.yaml": ("paths", tmp_path / "text")}
    schedule = loader.DatasetBuildSchedule(local_batch_size=2, global_batch_size=4, max_steps=20, val_check_interval=10)
    for name, (key, out) in paths.items():
        config = yaml.safe_load((ROOT / "examples" / "automodel" / name).read_text())
        for block, loader_block in (("dataset", "dataloader"), ("validation_dataset", "validation_dataloader")):
            if block not in config:
                continue
            kwargs = {k: v for k, v in config[block].items() if k != "_target_"}
            kwargs[key] = out if isinstance(out, list) else str(out)
            if key == "paths":
                kwargs["index_mapping_dir"] = str(tmp_path / "cache")
            dataset_config = loader.make_dataset_config(config[block]["_target_"], kwargs)
            if getattr(dataset_config, "requires_training_schedule", False):
                built = dataset_config.build(tokenizer=tok, training_schedule=schedule)
                assert len(built) == (80 if block == "dataset" else kwargs["num_val_samples"])  # train: max_steps x gbs
            else:
                built = dataset_config.build(tokenizer=tok)
            collate = (config.get(loader_block) or {}).get("collate_fn")
            fn = loader.make_collate_fn(collate["_target_"], {k: v for k, v in collate.items() if k != "_target_"}) if collate else None
            fn = fn.build(tokenizer=tok) if isinstance(fn, loader.CollatorConfig) else fn or default_collater
            batch = fn([built[0], built[1]])
            assert any(k in batch for k in ("input_ids", "q_input_ids")), (name, block)


def test_mistakes_are_one_clear_error(tmp_path, tokenizers):
    """SQuAD answers of another shape are a bad record (path:line, exit 2); a loader given another
    tokenizer than the output's, or an output of another kind, says so."""
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**squad_rows(1)[0], "answers": {"text": [5], "answer_start": [0]}}])
    result = prep("tokenize", bad, "-o", tmp_path / "bad", "--recipe", "instruction", "--preset", "squad",
                  "--tokenizer", tokenizers["gpt2"], check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}:1: column 'answers': expected SQuAD's answers {{\"text\": [strings, ...]}}, got text of int")
    raw = write_jsonl(tmp_path / "squad.jsonl", squad_rows(6))
    prep("tokenize", raw, "-o", tmp_path / "out", "--recipe", "instruction", "--preset", "squad", "--mask-convention", "automodel",
         "--tokenizer", tokenizers["gpt2"])
    with pytest.raises(ValueError, match=r"was tokenized with .*gpt2 \(50,257 tokens\); the tokenizer has 49,152"):
        automodel.make_squad_dataset(_tok(tokenizers["smollm2"]), dataset_name=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not a retrieval output"):
        automodel.RetrievalDatasetConfig(data_dir_list=str(tmp_path / "out")).build()
    with pytest.raises(ValueError, match="not a prep manifest"):
        automodel.RetrievalDatasetConfig(data_dir_list=str(raw)).build()


def test_padding_to_the_tokenizers_limit_without_a_length_is_automodels(tmp_path, tokenizers):
    """padding: max_length without seq_length pads (and truncation cuts) to the tokenizer's
    model_max_length, as HF tokenizers do inside AutoModel's datasets."""
    from nemo_automodel.components.datasets.llm.squad import make_squad_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "train.jsonl", squad_rows(6))
    prep("tokenize", raw / "train.jsonl", "-o", tmp_path / "out", "--recipe", "instruction", "--preset", "squad",
         "--mask-convention", "automodel", "--tokenizer", tokenizers["gpt2"])
    tok = _tok(tokenizers["gpt2"])
    theirs = make_squad_dataset(tok, dataset_name=str(raw), padding="max_length", truncation=True)
    ours = automodel.make_squad_dataset(tok, dataset_name=str(tmp_path / "out"), padding="max_length", truncation=True)
    assert [ours[i] for i in range(len(ours))] == [dict(theirs[i]) for i in range(len(theirs))]
    assert len(ours[0]["input_ids"]) == tok.model_max_length - 1


def test_prepacked_packs_are_automodels_packs_of_the_same_samples(tmp_path, tokenizers):
    """An output made with --pack read with prepacked: each of prep's packs equals what AutoModel's
    pack_dataset makes of that pack's samples (read as AutoModel's items), and the packs go through
    AutoModel's DataloaderConfig with prepacked packing and its THD collater on two ranks."""
    import yaml
    from nemo_automodel.components.datasets.llm.packed_sequence import pack_dataset
    from nemo_automodel.components.datasets.utils import packed_sequence_thd_collater

    from chat_cases import conversations
    from helpers import ROOT

    corpus = write_jsonl(tmp_path / "chat.jsonl", conversations({"system": True}, 60, seed=9))
    prep("tokenize", corpus, "-o", tmp_path / "packed", "--recipe", "chat", "--tokenizer", tokenizers["smollm2"],
         "--mask-convention", "automodel", "--pack", "512")
    tok = _tok(tokenizers["smollm2"])
    samples = automodel.ChatDataset(str(tmp_path / "packed"), tokenizer=tok)
    packs = automodel.ChatDataset(str(tmp_path / "packed"), tokenizer=tok, prepacked=True)
    assert 1 < len(packs) < len(samples)
    seen = 0
    for i in range(len(packs)):
        n = len(packs[i]["seq_lens"])
        theirs = pack_dataset([samples[k] for k in range(seen, seen + n)], split=None, packed_sequence_size=512,
                              padding_idx=tok.pad_token_id)
        assert len(theirs) == 1 and packs[i] == dict(theirs[0]), i
        seen += n
    assert seen == len(samples)
    # the example config's blocks, its path and pack size pointed at this output
    example = yaml.safe_load((ROOT / "examples" / "automodel" / "chat_sft_prepacked.yaml").read_text())
    dataset = {k: v for k, v in example["dataset"].items() if k != "_target_"} | {"path_or_dataset_id": str(tmp_path / "packed")}
    assert example["dataloader"]["collate_fn"] == "nemo_automodel.components.datasets.utils.packed_sequence_thd_collater"
    config = loader.DataloaderConfig(
        dataset_config=loader.make_dataset_config(example["dataset"]["_target_"], dataset),
        packing=loader.make_packing_config("thd", example["packed_sequence"] | {"packed_sequence_size": 512}),
        batch_size=2, shuffle=True, seed=3, collate_fn=packed_sequence_thd_collater)
    batches = [b for rank in (0, 1) for b in config.build(dp_rank=rank, dp_world_size=2, tokenizer=tok)]
    assert sum(len(b["input_ids"]) for b in batches) == len(packs) // 2 * 2  # every pack once (the sampler evens the ranks)
    assert all(b["qkv_format"] == "thd" and b["input_ids"].shape == b["labels"].shape and b["input_ids"].shape[1] == 512
               for b in batches)
    prep("tokenize", corpus, "-o", tmp_path / "plain", "--recipe", "chat", "--tokenizer", tokenizers["smollm2"],
         "--mask-convention", "automodel")
    with pytest.raises(ValueError, match="prepacked needs an output made with prep tokenize --pack"):
        automodel.ChatDataset(str(tmp_path / "plain"), tokenizer=tok, prepacked=True)
