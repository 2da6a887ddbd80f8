"""The merged model as a GGUF file, for llama.cpp, Ollama and LM Studio, written with the `gguf` package.

What travels inside, so that the file answers as our pipeline does without any file beside it: the
weights (f16, or q8_0 where a row's length allows), the byte-level BPE tokenizer (every id, its type,
the merges), our chat template with the system prompt in its place, the end-of-turn token as the stop
token (eos and eot), and the pad token. llama.cpp's conventions, as its own converter writes them:
the Llama architecture's query and key rows permuted for its rotary layout (Qwen3 is stored as it is),
a Llama 3 rope scaling as per-frequency factors (`rope_freqs.weight`), tied output embeddings left out,
norms in f32. No beginning-of-text token is added by the engine: the Llama 3.2 template writes its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from core.errors import ArtifactError

# what a precision name of params.yaml (export.gguf) writes: (the weights' type, the file type)
PRECISIONS = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3}
# llama.cpp names its pre-tokenizers (the split before BPE); each family's, as its converter detects it
PRE_TOKENIZERS = {"smollm2": "smollm", "llama32": "llama-bpe", "qwen3": "qwen2"}


@dataclasses.dataclass(frozen=True)
class Chat:
    """What the chat needs of the tokenizer: the template and its default system prompt, the family (its
    pre-tokenizer), the end-of-turn (stop), pad and beginning-of-text ids. None leaves a key out."""

    template: str | None
    system: str
    family: str
    stop_id: int | None
    pad_id: int
    bos_id: int | None = None
    stop_token: str | None = None  # the end of turn's text (the Modelfile's stop)


def chat_from_merged(merged: str | Path, system: str, family: str) -> Chat:
    """The Chat of a merged checkpoint as the export saved it: our template (chat_template.jinja), the end
    of turn as its eos token, its pad and bos tokens (tokenizer_config.json), their ids (tokenizer.json)."""
    merged = Path(merged)
    settings = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {**tokenizer["model"]["vocab"], **{added["content"]: added["id"] for added in tokenizer["added_tokens"]}}
    template_file = merged / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.exists() else settings.get("chat_template")

    def token_id(key: str) -> int | None:
        token = settings.get(key)
        return ids[token] if token is not None else None

    eos, pad, bos = (token_id(key) for key in ("eos_token", "pad_token", "bos_token"))
    return Chat(template, system, family, eos, pad, bos, settings.get("eos_token"))


def with_default_system(template: str, system: str) -> str:
    """`template` with `system` as the system turn where the messages bring none (a chat in llama.cpp or
    LM Studio), so that a bare user message renders as training's prompt did."""
    quoted = json.dumps(system)  # a Jinja string literal: JSON's escaping is Jinja's
    return (
        "{% if messages[0]['role'] != 'system' %}"
        f"{{% set messages = [{{'role': 'system', 'content': {quoted}}}] + messages %}}"
        "{% endif %}" + template
    )


def write_gguf(merged: str | Path, path: str | Path, precision: str, chat: Chat) -> None:
    """Write the merged checkpoint `merged` (config.json, safetensors, tokenizer.json) to `path`."""
    merged = Path(merged)
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    arch = ARCHITECTURES[config["model_type"]]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    weight_type, file_type = PRECISIONS[precision]
    _write_hyperparameters(writer, config, file_type)
    _write_tokenizer(writer, merged, config["vocab_size"], chat)
    for name, array in _tensors(merged, config, arch):
        _add_tensor(writer, name, array, weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_hyperparameters(writer: gguf.GGUFWriter, config: dict, file_type) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(config.get("_name_or_path") or "merged")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(_rope(config).get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(head_dim)
    # llama.cpp assumes hidden / heads unless told: Qwen3's head is wider (128 against 64 at 0.6B), and a
    # Llama-architecture checkpoint may set head_dim too
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope(config: dict) -> dict:
    """The rope settings, where transformers 5 keeps them (rope_parameters) or older configs did."""
    found = dict(config.get("rope_scaling") or {})
    found.update(config.get("rope_parameters") or {})
    if "rope_theta" in config:
        found.setdefault("rope_theta", config["rope_theta"])
    return found


def _write_tokenizer(writer: gguf.GGUFWriter, merged: Path, vocab_size: int, chat: Chat) -> None:
    tokenizer = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size  # ids the embedding has and the tokenizer never gives
    for text, index in tokenizer["model"]["vocab"].items():
        if index < vocab_size:
            tokens[index], types[index] = text, gguf.TokenType.NORMAL
    for added in tokenizer.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[chat.family])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if chat.stop_id is not None:
        writer.add_eos_token_id(chat.stop_id)
        writer.add_eot_token_id(chat.stop_id)
    writer.add_pad_token_id(chat.pad_id)
    if chat.bos_id is not None:  # named, not added: the template writes it where the family has one
        writer.add_bos_token_id(chat.bos_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat.template is not None:
        writer.add_chat_template(with_default_system(chat.template, chat.system))


def _tensors(merged: Path, config: dict, arch):
    """(GGUF name, float32 array) of every weight, in llama.cpp's layout."""
    state = {}
    for file in sorted(merged.glob("*.safetensors")):
        state.update(load_file(str(file)))
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    for hf_name, array in state.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # the output layer is the token embedding, which llama.cpp reads in its place
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ArtifactError(f"{merged}: no GGUF name for the tensor {hf_name}; the gguf stage cannot write it")
        array = array.astype(np.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and name.endswith(("attn_q.weight", "attn_k.weight")):
            array = _permute(array, heads if name.endswith("attn_q.weight") else kv_heads)
        yield name, array
    factors = _llama3_rope_factors(config)
    if factors is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Each head's rows from transformers' rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _llama3_rope_factors(config: dict) -> np.ndarray | None:
    """Llama 3's rope scaling as the factor each frequency is divided by (llama.cpp's rope_freqs); the
    same arithmetic as transformers' llama3 rope initialisation."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base, factor = rope.get("rope_theta", 10000.0), rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / head_dim))
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, weight_type) -> None:
    """Norms, biases and rope factors (1-D) stay f32, as llama.cpp keeps them; q8_0 needs rows of 32s."""
    if array.ndim == 1:
        writer.add_tensor(name, array)
    elif weight_type == gguf.GGMLQuantizationType.Q8_0 and array.shape[-1] % 32 == 0:
        writer.add_tensor(name, gguf.quants.quantize(array, weight_type), raw_dtype=weight_type)
    else:
        writer.add_tensor(name, array.astype(np.float16))
