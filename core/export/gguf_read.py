"""A GGUF file read back: its chat metadata, and the checks the gguf stage runs before a file lands (no
torch, no transformers: ask and deploy read the metadata too)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from core.prompts import render_chat


def metadata(path: str | Path) -> dict:
    """What the checks and loaders read of a GGUF file: its architecture and head width, chat_template, the
    eos, eot and pad ids, add_bos, and the Llama 3 rope factors (None where absent)."""
    reader = gguf.GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    architecture = value(gguf.Keys.General.ARCHITECTURE)
    return {
        "architecture": architecture,
        "head_dim": value(gguf.Keys.Attention.KEY_LENGTH.format(arch=architecture))
        or value(gguf.Keys.Rope.DIMENSION_COUNT.format(arch=architecture)),
        "chat_template": value(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
        "eos": value(gguf.Keys.Tokenizer.EOS_ID),
        "eot": value(gguf.Keys.Tokenizer.EOT_ID),
        "pad": value(gguf.Keys.Tokenizer.PAD_ID),
        "add_bos": value(gguf.Keys.Tokenizer.ADD_BOS),
        "rope_factors": next(
            (np.array(t.data, dtype=np.float32) for t in reader.tensors if t.name == "rope_freqs.weight"), None
        ),
    }


def problems(path: str | Path, messages: list[dict], expected_prompt: str, stop_id: int) -> list[str]:
    """What would make the file answer otherwise than training taught: its own template rendering
    `messages` to anything but `expected_prompt` (training's prompt text), and a stop token other than
    the end of turn. Empty when the file is right."""
    found = metadata(path)
    lines = []
    if not found["chat_template"]:
        lines.append(f"{path}: no tokenizer.chat_template: llama.cpp and Ollama would prompt it with another chat")
    else:
        for name, shown in (("with the system turn", messages), ("without it", messages[1:])):
            if render_chat(found["chat_template"], shown) != expected_prompt:
                lines.append(f"{path}: its chat template renders a prompt ({name}) unlike training's")
    for key in ("eos", "eot"):
        if found[key] != stop_id:
            lines.append(f"{path}: tokenizer.ggml.{key}_token_id is {found[key]}, not the end of turn ({stop_id})")
    if found["add_bos"]:
        lines.append(f"{path}: add_bos_token is true: the engine would add a beginning-of-text token to ours")
    return lines
