"""The Unsloth backend end to end on a small random-init Qwen3 (run on a CUDA machine:
`python -m pytest -m gpu`; skipped elsewhere)."""
import dataclasses

import pytest

from core.families import model_for
from core.model import BaseUnslothModel
from tests.checkpoints import REPO, build_checkpoint
from tests.conftest import tiny_params
from core.data import read_vignettes

pytestmark = pytest.mark.gpu
ROWS = read_vignettes(REPO / "data" / "sample" / "train.csv", labelled=True)
# Unsloth's kernels want ordinary head sizes: larger than the CPU tests' tiny shape.
SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


@pytest.mark.parametrize("load_in_4bit", [True, False], ids=["4bit", "bf16"])
def test_unsloth_fine_tunes_generates_and_reloads(tmp_path, repo_params, load_in_4bit):
    import torch

    checkpoint = build_checkpoint("qwen3", tmp_path / "qwen3", shape=SMALL)
    params = tiny_params(repo_params, "qwen3", checkpoint, max_steps=6, learning_rate=1e-3)
    profile = params.profile.__class__(**{**params.profile.__dict__, "backend": "unsloth", "load_in_4bit": load_in_4bit})
    model = model_for(profile, params.prompt.system)
    assert model.backend.name == "unsloth"
    metrics = model.fine_tune(ROWS[:16], ROWS[16:20], profile.training, tmp_path / "run")
    assert metrics["steps"] == 6 and metrics["backend"] == "unsloth" and metrics["peak_gpu_memory_gb"] > 0
    out = model.generate_responses(ROWS[20:28], profile.generation)
    assert len(out.texts) == 8 and all(0 < n <= profile.generation.max_new_tokens for n in out.new_tokens)
    assert model.tokenizer.padding_side == "left"
    beams = dataclasses.replace(profile.generation, num_beams=4, repetition_penalty=1.2)
    beamed = model.generate_responses(ROWS[20:28], beams)
    assert len(beamed.texts) == 8 and beamed.decoding_work_ratio >= 4  # beam search under Unsloth's inference mode
    assert model.generate_responses(ROWS[20:28], beams).texts == beamed.texts
    model.save_adapter(tmp_path / "adapter")
    model.cleanup_model()
    BaseUnslothModel.clear_cache()
    held = torch.cuda.memory_allocated()

    again = model_for(profile, params.prompt.system)
    again.load_adapter(tmp_path / "adapter")
    assert again.generate_responses(ROWS[20:28], profile.generation).texts == out.texts
    again.cleanup_model()
    BaseUnslothModel.clear_cache()
    assert torch.cuda.memory_allocated() <= held + 2**20  # the second model's memory was given back


def test_unsloth_dpo_moves_the_sft_adapter(tmp_path, repo_params):
    """The align stage's DPO on the Unsloth backend (its patched DPOTrainer), 4-bit."""
    import torch

    from core.alignment import build_pairs, direct_preference_optimisation

    checkpoint = build_checkpoint("qwen3", tmp_path / "qwen3", shape=SMALL)
    params = tiny_params(repo_params, "qwen3", checkpoint, max_steps=4, learning_rate=1e-3)
    profile = dataclasses.replace(params.profile, backend="unsloth", load_in_4bit=True)
    sft = model_for(profile, params.prompt.system)
    sft.fine_tune(ROWS[:16], [], profile.training, tmp_path / "run")
    sft.save_adapter(tmp_path / "sft")
    sft.cleanup_model()
    BaseUnslothModel.clear_cache()

    model = model_for(profile, params.prompt.system)
    model.load_adapter(tmp_path / "sft", trainable=True)
    before = {n: w.detach().float().clone() for n, w in model.model.named_parameters() if "lora_" in n}
    pairs = build_pairs(ROWS[:8], ["llm"]).pairs
    config = dataclasses.replace(params.align, method="dpo", max_steps=2, batch_size=2, learning_rate=1e-3)
    metrics = direct_preference_optimisation(model, pairs[:4], pairs[4:6], config, tmp_path / "align")
    assert metrics["steps"] == 2 and metrics["val_reward_accuracy"] is not None
    assert set(model.model.peft_config) == {"default"}
    assert any(not torch.equal(w.detach().float(), before[n]) for n, w in model.model.named_parameters() if "lora_" in n)
    out = model.generate_responses(ROWS[20:24], profile.generation)  # and it still answers
    assert len(out.texts) == 4
    model.save_adapter(tmp_path / "aligned")
    model.cleanup_model()
    BaseUnslothModel.clear_cache()
