"""Random-init checkpoints of the real architecture classes, built locally (no hub).

The tokenizer is a small byte-level BPE trained on the shipped sample vignettes, with the
special tokens of every family's chat template, so each family's real loading code
(AutoModelForCausalLM / AutoTokenizer from a directory) runs on it unchanged.
"""
from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",  # ChatML: SmolLM2, Qwen3
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>",  # Llama 3
]
# initializer_range 0.2: with the usual 0.02 a tiny random model's logits are so flat that LoRA alone
# can hardly move its loss, and a test of "the loss goes down" would measure nothing.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, initializer_range=0.2)
# The shapes of the real models (from their published configs), for GPU benchmarks.
REAL_SHAPES = {
    "qwen3": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960),
    "llama32": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                    rms_norm_eps=1e-5, max_position_embeddings=131072),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
}


def sample_texts() -> list[str]:
    texts = []
    for name in ("train.csv", "test.csv"):
        with open(REPO / "data" / "sample" / name, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                texts += [row["Prompt"], row.get("Clinician", "")]
    return texts


def build_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(sample_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", unk_token=None)


def build_checkpoint(family: str, directory: str | Path, shape: dict | None = None, seed: int = 0) -> Path:
    """Save a random-init checkpoint of `family` (qwen3 | llama32 | smollm2) with the tokenizer above."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    directory = Path(directory)
    tokenizer = build_tokenizer()
    settings = {**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 2048, **(shape or {})}
    settings["vocab_size"] = max(settings["vocab_size"], len(tokenizer))
    config_class = Qwen3Config if family == "qwen3" else LlamaConfig  # SmolLM2 and Llama 3.2 are both Llama
    config = config_class(**settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
