"""A few training steps of NeMo AutoModel's own recipe (TrainFinetuneRecipeForNextTokenPrediction)
on CPU with a tiny random-weight Llama built from a config: the config with AutoModel's dataset
block, and the same config with only that block naming loaders.automodel over prep's offline
output, give the same loss at every step (and the same count of trained tokens)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders.manifest import dataset_prefixes, load

pytest.importorskip("nemo_automodel.recipes.llm.train_ft")
from chat_cases import CASES, conversations  # noqa: E402

pytestmark = pytest.mark.slow
TOKENIZER = TOKENIZERS / "smollm2-135m-instruct"
STEPS = 4


def _config(tmp_path, dataset: dict, dataloader: dict) -> dict:
    return {
        "seed": 1234,
        "step_scheduler": {"global_batch_size": 4, "local_batch_size": 2, "max_steps": STEPS, "num_epochs": 100,
                           "ckpt_every_steps": 10**6, "val_every_steps": None},
        "dist_env": {"backend": "gloo", "timeout_minutes": 1},
        "model": {"_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_config",
                  "config": {"_target_": "transformers.LlamaConfig", "vocab_size": 49152, "hidden_size": 64,
                             "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True,
                             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
                  "torch_dtype": "float32", "attn_implementation": "sdpa", "use_liger_kernel": False},
        "checkpoint": {"enabled": False, "checkpoint_dir": str(tmp_path / "ckpt")},
        "distributed": {"strategy": "fsdp2", "dp_size": 1, "tp_size": 1, "cp_size": 1, "pp_size": 1},
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {**dataset, "tokenizer": {"pretrained_model_name_or_path": str(TOKENIZER)}},
        "packed_sequence": {"packed_sequence_size": 0},
        "dataloader": {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader", "num_workers": 0, **dataloader},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0,
                      "foreach": False},
        "clip_grad_norm": {"max_norm": 1.0},
    }


def _train(tmp_path, name: str, config: dict) -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "automodel_recipe_cpu.py"), str(path), str(STEPS)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["losses"]) == STEPS
    return result


def test_chat_sft_losses_equal_automodels(tmp_path):
    """ChatDataset from the raw JSONL (AutoModel tokenizes and masks at train time) against
    loaders.automodel.ChatDataset over prep's output made with --mask-convention automodel: the
    same losses step for step. (Packed training needs flash attention in AutoModel 0.7.0, so no
    CPU run packs; test_automodel_sft checks AutoModel's packer on our items batch for batch.)"""
    corpus = write_jsonl(tmp_path / "chat.jsonl", conversations({"system": True, **CASES.get("smollm2", {})}, 40, seed=2))
    prep("tokenize", corpus, "-o", tmp_path / "sft", "--recipe", "chat", "--tokenizer", TOKENIZER, "--mask-convention", "automodel")
    collate = {"collate_fn": {"_target_": "nemo_automodel.components.datasets.utils.default_collater"}, "shuffle": True}
    options = {"seq_length": 256, "truncation": True}
    theirs = _train(tmp_path, "theirs", _config(tmp_path, {"_target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
                                                           "path_or_dataset_id": str(corpus), **options}, collate))
    ours = _train(tmp_path, "ours", _config(tmp_path, {"_target_": "loaders.automodel.ChatDataset",
                                                       "path_or_dataset_id": str(tmp_path / "sft"), **options}, collate))
    assert ours == theirs
    assert theirs["losses"][0] != theirs["losses"][-1]  # it trained


@pytest.mark.parametrize("sampler", ["single", "cyclic"])
def test_pretraining_losses_equal_automodels(tmp_path, sampler):
    """AutoModel's MegatronPretraining against loaders.automodel.MegatronPretraining over the same
    prep output, the rest of the config (its Megatron sampler, `dataloader_type: single`) unchanged:
    both take their sample counts from the recipe's training schedule."""
    corpus = write_jsonl(tmp_path / "text.jsonl", botchan_documents(300, seed=4))
    prep("tokenize", corpus, "-o", tmp_path / "text", "--tokenizer", TOKENIZER)
    prefix = dataset_prefixes(load(tmp_path / "text"), "text")[0]
    common = {"seq_length": 128, "seed": 1234, "split": "99,1,0", "splits_to_build": "train"}
    loader = {"collate_fn": "torch.utils.data.default_collate", "dataloader_type": sampler}
    theirs = _train(tmp_path, "theirs", _config(tmp_path, {
        "_target_": "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining",
        "paths": str(prefix), "index_mapping_dir": str(tmp_path / "am-cache"), **common}, loader))
    ours = _train(tmp_path, "ours", _config(tmp_path, {  # the sample counts from the schedule, as AutoModel's
        "_target_": "loaders.automodel.MegatronPretraining", "paths": str(tmp_path / "text"), **common}, loader))
    assert ours == theirs


def test_nanogpt_pretraining_losses_equal_automodels(tmp_path):
    """AutoModel's NanogptDataset (an iterable over the shards) against loaders.automodel's
    map-style NanogptDataset over the same prep shards, both read in order (shuffle off)."""
    corpus = write_jsonl(tmp_path / "text.jsonl", botchan_documents(200, seed=5))
    prep("tokenize", corpus, "-o", tmp_path / "nano", "--tokenizer", TOKENIZER, "--format", "nanogpt", "--shard-tokens", "8k")
    bos = load(tmp_path / "nano")["tokenizer"]["bos_id"]
    loader = {"collate_fn": {"_target_": "nemo_automodel.components.datasets.utils.default_collater"}, "shuffle": False}
    common = {"seq_len": 96, "bos_token": bos}
    theirs = _train(tmp_path, "theirs", _config(tmp_path, {"_target_": "nemo_automodel.components.datasets.llm.nanogpt_dataset.NanogptDataset",
                                                           "file_pattern": str(tmp_path / "nano" / "text_*.bin"), **common}, loader))
    ours = _train(tmp_path, "ours", _config(tmp_path, {"_target_": "loaders.automodel.NanogptDataset",
                                                       "file_pattern": str(tmp_path / "nano"), **common}, loader))
    assert ours == theirs
