"""Run NeMo AutoModel's own LLM training recipe (TrainFinetuneRecipeForNextTokenPrediction: its
setup() and training loop) for a few steps on CPU and print each step's loss as JSON.

    python tests/automodel_recipe_cpu.py CONFIG.yaml STEPS

AutoModel 0.7.0 assumes CUDA on three calls of that path; on a CPU-only torch each raises, so
they are neutralised here (and nothing else is touched):
- `torch.cuda.reset_peak_memory_stats()` (train_ft.py, called unconditionally) is a no-op;
- `torch.cuda.current_device()` (auto_model.py, building a device object only pipeline
  parallelism uses) gives 0;
- `apply_model_infrastructure` (auto_model.py) places the model on the CPU instead of that device.
"""

import json
import os
import sys

for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def cpu_only_patches() -> None:
    if torch.cuda.is_available():
        return
    import nemo_automodel._transformers.auto_model as auto_model

    torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: 0
    place = auto_model.apply_model_infrastructure

    def on_cpu(*args, device=None, **kwargs):
        return place(*args, device=torch.device("cpu"), **kwargs)

    auto_model.apply_model_infrastructure = on_cpu


def main(config_path: str, steps: int) -> None:
    cpu_only_patches()
    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    logged = []

    class Recorded(TrainFinetuneRecipeForNextTokenPrediction):
        def log_train_metrics(self, log_data):  # what the recipe logs each step, kept
            logged.append({"loss": float(log_data.metrics["loss"]),
                           "num_label_tokens": int(log_data.metrics["num_label_tokens"])})
            return super().log_train_metrics(log_data)

    config = load_yaml_config(config_path)
    config.set_by_dotted("step_scheduler.max_steps", steps)
    recipe = Recorded(config)
    recipe.setup()
    recipe.run_train_validation_loop()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(json.dumps({"losses": [s["loss"] for s in logged], "num_label_tokens": [s["num_label_tokens"] for s in logged]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
