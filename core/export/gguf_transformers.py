"""A GGUF file's model loaded through transformers' GGUF loader: how CI answers with the file where
llama.cpp is absent (tests/test_gguf.py).

transformers' loader reads neither a Llama 3 rope scaling (llama.cpp reads it from `rope_freqs.weight`)
nor Qwen3's head width (`qwen3.attention.key_length`): both are taken from the file here, as llama.cpp
does. Its conversion of the file's tokenizer splits the text before BPE not always as the family does
(two newlines after a Llama 3 header come out as two tokens, not one), so models are compared on the
same token ids, and tokenizing the GGUF's way is left to llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

from core.export.gguf_read import metadata


def load_with_transformers(path: str | Path, dtype=None):
    """The model of a GGUF file through transformers, the rope factors applied as llama.cpp does."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    found = metadata(path)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    config.head_dim = found["head_dim"]  # the loader leaves Qwen3's at its class default (128)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, config=config, dtype=dtype or torch.float32
    )
    factors = found["rope_factors"]
    if factors is not None:
        rotary = model.model.rotary_emb
        scaled = rotary.inv_freq / torch.from_numpy(factors).to(rotary.inv_freq)
        rotary.inv_freq = scaled
        rotary.original_inv_freq = scaled
    model.eval()
    return model
