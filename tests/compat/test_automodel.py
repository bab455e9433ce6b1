"""loaders.automodel against NeMo AutoModel's own datasets over the same files and options."""

import pytest
import torch

from helpers import ROOT, TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders import automodel
from loaders.manifest import dataset_prefixes, load

megatron_dataset = pytest.importorskip("nemo_automodel.components.datasets.llm.megatron_dataset")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("am")
    corpus = write_jsonl(root / "b.jsonl", botchan_documents(500, seed=3))
    prep("tokenize", ROOT / "examples" / "sample.jsonl", "-o", root / "a", "--tokenizer", TOKENIZERS / "gpt2")
    prep("tokenize", corpus, "-o", root / "b", "--tokenizer", TOKENIZERS / "gpt2")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZERS / "gpt2"))


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group: AutoModel's blend builder asks torch.distributed for the rank."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _automodel(tmp_path, paths, split_name, **kwargs):
    built = megatron_dataset.MegatronPretraining(paths=paths, index_mapping_dir=str(tmp_path / "automodel-cache"),
                                                 splits_to_build=split_name, **kwargs)
    built.build()
    return built.get_dataset(split_name)


def _assert_same(ours, theirs, nonempty: bool = True):
    assert len(ours) == len(theirs)
    assert len(theirs) > 0 or not nonempty
    for i in range(len(theirs)):
        want, got = theirs[i], ours[i]
        assert list(got) == list(want), i
        for key in want:
            if isinstance(want[key], torch.Tensor):
                assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (i, key)
            else:  # a blend's dataset_id
                assert type(got[key]) is type(want[key]) and got[key] == want[key], (i, key)


@pytest.mark.parametrize("split_name,counts", [
    ("train", dict(num_train_samples=300)), ("train", {}), ("validation", dict(num_train_samples=300, num_val_samples=60)),
    ("validation", dict(trainer_max_steps=2500, global_batch_size=2, trainer_val_check_interval=1000)),
    ("validation", dict(num_train_samples=300)),  # training shorter than one check interval: AutoModel builds none
], ids=["train-300", "train-epoch", "val-60", "val-from-steps", "val-none"])
@pytest.mark.parametrize("create_attention_mask", [False, True], ids=["no-mask", "mask"])
def test_megatron_pretraining_equals_automodels_sample_for_sample(outputs, tokenizer, tmp_path, split_name, counts,
                                                                 create_attention_mask):
    """One prep output (its folder, as a user names it) against AutoModel's MegatronPretraining
    over the same Megatron prefix: the same items, keys, dtypes and len(), train and validation,
    with AutoModel's sample counts from num_*_samples or from the trainer's steps."""
    a, _ = outputs
    options = dict(seq_length=64, seed=7, split="90,8,2", tokenizer=tokenizer, create_attention_mask=create_attention_mask,
                   **counts)
    theirs = _automodel(tmp_path, dataset_prefixes(load(a)), split_name, **options)
    ours = automodel.MegatronPretraining(paths=str(a), index_mapping_dir=str(tmp_path / "ours"), splits_to_build=split_name,
                                         **options)
    _assert_same(ours, theirs, nonempty=not (split_name == "validation" and counts == dict(num_train_samples=300)))


@pytest.mark.parametrize("train,val", [(400, 50), (401, 51)])  # 0.3 x 401: a blend's shares round up, its length too
def test_a_weighted_blend_and_per_split_paths_equal_automodels(outputs, tokenizer, tmp_path, process_group, train, val):
    a, b = outputs
    pa, pb = dataset_prefixes(load(a))[0], dataset_prefixes(load(b))[0]
    options = dict(seq_length=48, seed=11, tokenizer=tokenizer, num_train_samples=train, num_val_samples=val)
    zipped = ["30", pa, "70", pb]
    for name in ("train", "validation"):
        _assert_same(automodel.MegatronPretraining(paths=zipped, split="95,5,0", splits_to_build=name,
                                                   index_mapping_dir=str(tmp_path / "o1"), **options),
                     _automodel(tmp_path, zipped, name, split="95,5,0", **options))
    per_split = {"train": ["40", pa, "60", pb], "validation": [pb]}
    for name in ("train", "validation"):
        ours = automodel.MegatronPretraining(paths=per_split, splits_to_build=name, index_mapping_dir=str(tmp_path / "o2"), **options)
        _assert_same(ours, _automodel(tmp_path, per_split, name, **options))


def test_a_glob_of_shards_is_read_as_automodels_example_config_names_it(outputs, tokenizer, tmp_path, process_group):
    """`paths: out/text_document*` (AutoModel's example form) over a sharded output, float split."""
    root = tmp_path / "sharded"
    prep("tokenize", ROOT / "examples" / "sample.jsonl", "-o", root, "--tokenizer", TOKENIZERS / "gpt2", "--shard-size", "60k")
    assert len(dataset_prefixes(load(root))) > 1
    options = dict(seq_length=64, split="0.99, 0.01, 0.00", tokenizer=tokenizer, num_train_samples=200)
    pattern = str(root / "text_document*")
    _assert_same(automodel.MegatronPretraining(paths=pattern, index_mapping_dir=str(tmp_path / "o"), **options),
                 _automodel(tmp_path, pattern, "train", **options))


def test_unsupported_arguments_and_splits_are_one_clear_error(outputs):
    a, _ = outputs
    with pytest.raises(TypeError, match="unsupported argument"):
        automodel.MegatronPretraining(paths=str(a), seq_length=64, object_storage_config={"path_to_idx_cache": "/x"})
    with pytest.raises(ValueError, match="name one split"):
        automodel.MegatronPretraining(paths=str(a), seq_length=64, splits_to_build=["train", "test"])


def test_importing_it_does_not_import_automodel():
    import subprocess
    import sys

    code = "import sys, loaders.automodel; print(any(m.startswith('nemo_automodel') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip() == "False"


def test_a_yaml_dataset_block_through_automodels_loader_gives_automodels_batches(outputs, tokenizer, tmp_path):
    """`dataset: {_target_: loaders.automodel.MegatronPretraining, ...}` resolved by AutoModel's own
    make_dataset_config(...).build(tokenizer=...), in its ParallelAwareDataloader (two data-parallel
    ranks) with its default_collater: the batches of AutoModel's MegatronPretraining over the same
    files, rank by rank."""
    import functools
    import multiprocessing

    from nemo_automodel.components.datasets.loader import ParallelAwareDataloader, make_dataset_config
    from nemo_automodel.components.datasets.utils import default_collater

    multiprocessing.get_start_method()  # fixed now (fork here): AutoModel's loader would set spawn for the process
    a, _ = outputs
    block = {"paths": str(a), "seq_length": 64, "split": "99,1,0", "num_train_samples": 96, "seed": 3,
             "index_mapping_dir": str(tmp_path / "ours")}
    ours = make_dataset_config("loaders.automodel.MegatronPretraining", block).build(tokenizer=tokenizer)
    built = megatron_dataset.MegatronPretraining(paths=dataset_prefixes(load(a)), seq_length=64, split="99,1,0",
                                                 num_train_samples=96, seed=3, tokenizer=tokenizer,
                                                 index_mapping_dir=str(tmp_path / "automodel-cache"), splits_to_build="train")
    built.build()
    theirs = built.get_dataset("train")
    collate = functools.partial(default_collater, pad_seq_len_divisible=16)
    for rank in range(2):
        loaders = [ParallelAwareDataloader(d, dp_rank=rank, dp_world_size=2, batch_size=4, collate_fn=collate, seed=5)
                   for d in (ours, theirs)]
        batches = [list(loader) for loader in loaders]
        assert len(batches[0]) == len(batches[1]) == 96 // 2 // 4
        for got, want in zip(*batches):
            assert list(got) == list(want)
            for key in want:
                assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_pad_equal_to_eos_masks_the_trailing_run_as_automodels(tmp_path, process_group):
    """SmolLM2's pad id is its EOS: AutoModel masks a trailing run of it after the first (texts
    ending in that token, then the EOD, make such runs), in input_ids, labels and loss_mask, and
    the zeroed input id zeroes the label before it too (the two are views of one array)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / "smollm2-135m-instruct"))
    assert tok.pad_token_id == tok.eos_token_id
    docs = botchan_documents(200, seed=8)
    docs = [{"text": d["text"][: 20 + i % 50] + ("<|im_end|>" if i % 3 == 0 else "")} for i, d in enumerate(docs)]
    out = tmp_path / "text"
    prep("tokenize", write_jsonl(tmp_path / "d.jsonl", docs), "-o", out, "--tokenizer", TOKENIZERS / "smollm2-135m-instruct")
    options = dict(seq_length=16, seed=5, tokenizer=tok, num_train_samples=300, split="1,0,0")
    ours = automodel.MegatronPretraining(paths=str(out), index_mapping_dir=str(tmp_path / "ours"), **options)
    theirs = _automodel(tmp_path, dataset_prefixes(load(out))[0], "train", **options)
    assert type(theirs).__name__ == "GPTDataset" and theirs.masks_and_position_ids_are_cacheable

    class Alone:
        """AutoModel's items each computed alone: its GPTDataset caches one loss-mask tensor and
        zeroes the pad positions in it in place, so without this every later item would also lose
        the loss where any earlier one was padded (an AutoModel bug the README names)."""

        def __len__(self):
            return len(theirs)

        def __getitem__(self, i):
            theirs.masks_and_position_ids_are_cached = False
            return theirs[i]

    _assert_same(ours, Alone())
    assert any((ours[i]["loss_mask"] == 0).any() for i in range(len(ours)))  # the masking was exercised
