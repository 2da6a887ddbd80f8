"""BaseUnslothModel on the CPU backend, with tiny random-init Qwen3 and Llama checkpoints (the
stand-ins; the toy tokenizer where many optimiser steps run)."""

import copy
import dataclasses
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from core.config import parse_params
from core.data import read_vignettes
from core.decode import static_cache
from core.decode.answer import generate_responses
from core.decode.generation import AUTO_MEMORY_SHARE, answer_only_rules, generate_kwargs, mbr_choice, rows_per_batch
from core.decode.request import DecodeRequest, plain_request
from core.models.backends import BackendError
from core.models.base import BaseUnslothModel
from core.models.families import FAMILIES, model_for
from core.train.common import IGNORE_INDEX, TrainingDiverged
from core.train.sft import fine_tune, training_examples
from tests.checkpoints import REPO
from tests.conftest import tiny_params

ROWS = read_vignettes(REPO / "data" / "sample" / "train.csv", labelled=True)
FAMILY_NAMES = ["qwen3", "llama32"]


def loaded(repo_params, checkpoints, family):
    params = tiny_params(repo_params, family, checkpoints[family])
    model = model_for(params.profile, params.prompt.system)
    model.load()
    yield model, params
    model.cleanup_model()
    BaseUnslothModel.clear_cache()


@pytest.fixture(params=FAMILY_NAMES)
def tiny(request, repo_params, tiny_checkpoints):
    """A family's tiny stand-in: its real tokenizer (benchmarks/standins.py)."""
    yield from loaded(repo_params, tiny_checkpoints, request.param)


@pytest.fixture(params=FAMILY_NAMES)
def toy(request, repo_params, toy_checkpoints):
    """A family's architecture with the toy tokenizer, for tests that run many optimiser steps
    (tests/checkpoints.py)."""
    yield from loaded(repo_params, toy_checkpoints, request.param)


def test_prompt_at_prediction_is_the_training_prompt(tiny):
    model, _ = tiny
    row = ROWS[0]
    prompt = model.prompt_for(row)
    full = model.tokenizer.apply_chat_template(model.messages_for(row, row["Clinician"].strip()), tokenize=False)
    # The whole rendered conversation starts with the prediction prompt, byte for byte, then the answer and end of turn.
    assert full.startswith(prompt + row["Clinician"].strip() + model.end_of_turn)
    assert row["Prompt"].strip() in prompt
    if model.profile.family == "qwen3":  # thinking is off, in training and prediction alike
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert "<think>\n\n</think>\n\n" + row["Clinician"].strip() in full
    else:
        assert prompt.startswith("<|begin_of_text|>") and prompt.count("<|begin_of_text|>") == 1


def test_labels_mask_the_prompt_and_keep_the_end_of_turn(tiny):
    model, _ = tiny
    examples = training_examples(model, ROWS[:3])
    eot = model.tokenizer.convert_tokens_to_ids(model.end_of_turn)
    assert model.tokenizer.pad_token_id != eot  # padding can never mask the stop token out
    for row, ids, labels in zip(ROWS[:3], examples.input_ids, examples.labels, strict=True):
        n_prompt = len(model.encode(model.prompt_for(row)))
        assert ids[:n_prompt] == model.encode(model.prompt_for(row))  # token-identical to prediction's prompt
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] and len(labels) > n_prompt
        assert labels[-1] == eot and ids[-1] == eot
        answer = model.tokenizer.decode(labels[n_prompt:-1])
        assert answer == row["Clinician"].strip()

    # and the trainer's own collator keeps them: right padding, padded labels ignored
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=model.tokenizer.pad_token_id)(
        [{"input_ids": ids, "labels": labels} for ids, labels in zip(examples.input_ids, examples.labels, strict=True)]
    )
    shortest = min(range(3), key=lambda i: len(examples.input_ids[i]))
    n = len(examples.input_ids[shortest])
    assert batch["labels"][shortest, n - 1] == eot
    assert (batch["labels"][shortest, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][shortest, n:] == 0).all()


def _loss_on(model, rows):
    examples = training_examples(model, rows)
    width = max(map(len, examples.input_ids))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i in examples.input_ids])
    labels = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in examples.labels])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in examples.input_ids])
    model.model.eval()
    with torch.no_grad():
        return model.model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()


def test_fine_tune_lowers_the_loss_and_the_adapter_reloads(toy, tmp_path, repo_params):
    model, params = toy
    batch = ROWS[:8]
    training = tiny_params(
        repo_params, params.profile.family, params.profile.name, max_steps=12, learning_rate=1e-2
    ).profile.training
    model.attach_lora(seed=0)
    before = _loss_on(model, batch)
    metrics = fine_tune(model, batch, ROWS[8:10], training, tmp_path / "run")
    after = _loss_on(model, batch)
    assert after < before - 0.5, (before, after)
    assert metrics["steps"] == 12 and metrics["trainable_params"] < metrics["total_params"] / 5
    assert metrics["val_loss"] > 0 and metrics["train_tokens_per_s"] > 0
    # one validation pass an epoch (2 steps each here), none repeated at the end: the last epoch's is the final score
    evals = [e for e in model.training_log if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10, 12] and metrics["val_loss"] == evals[-1]["eval_loss"]

    generation = params.profile.generation
    expected = generate_responses(model, ROWS[20:26], generation)
    model.save_adapter(tmp_path / "adapter")
    model.cleanup_model()
    # every file of the adapter readable as the others (safetensors writes its own 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "adapter").iterdir()} == {
        f.name: oct(0o666 & ~umask) for f in (tmp_path / "adapter").iterdir()
    }

    reloaded = model_for(params.profile, params.prompt.system)
    reloaded.load_adapter(tmp_path / "adapter")
    again = generate_responses(reloaded, ROWS[20:26], generation)
    assert again.texts == expected.texts
    assert again.new_tokens == expected.new_tokens
    assert any(expected.texts)  # the comparison is not between empty strings
    reloaded.cleanup_model()


def test_padding_free_and_one_pass_updates_follow_the_same_loss_curve(toy, tmp_path, repo_params):
    """The GPU's training settings (a whole update in one pass, rows concatenated without padding),
    forced here on a CPU: the same losses at every step as padded passes accumulated, so the
    prompt stays masked and no row attends to another."""
    model, params = toy
    curves = {}
    for name, settings in {
        "padded, 2 passes a step": dict(rows_per_pass=2, padding_free=False),
        "padded, 1 pass": dict(rows_per_pass=4, padding_free=False),
        "padding-free, 1 pass": dict(rows_per_pass=4, padding_free=True),
    }.items():
        training = tiny_params(
            repo_params,
            params.profile.family,
            params.profile.name,
            max_steps=3,
            batch_size=2,
            grad_accum=2,
            learning_rate=1e-2,
            **settings,
        ).profile.training
        BaseUnslothModel.clear_cache()
        run = model_for(params.profile, params.prompt.system)
        metrics = fine_tune(run, ROWS[:12], ROWS[12:16], training, tmp_path / name)
        assert (
            metrics["rows_per_pass"] == settings["rows_per_pass"]
            and metrics["padding_free"] is settings["padding_free"]
        )
        curves[name] = [e["loss"] for e in run.training_log if "loss" in e] + [metrics["val_loss"]]
        run.cleanup_model()
    reference = curves.pop("padded, 2 passes a step")
    assert len(reference) == 4 and reference[0] != reference[2]  # three steps that moved, and the validation loss
    for name, curve in curves.items():
        assert curve == pytest.approx(reference, rel=1e-4), name


def test_training_that_turns_nan_stops_at_once_with_a_clear_error(toy, tmp_path, repo_params):
    model, params = toy
    training = tiny_params(repo_params, params.profile.family, params.profile.name, max_steps=6).profile.training
    model.attach_lora(seed=0)
    with torch.no_grad():  # poisoned embeddings: every loss from the first step on is NaN
        model.model.get_input_embeddings().weight[:, 0] = float("nan")
    with pytest.raises(
        TrainingDiverged, match=r"diverged at step 1: loss is nan; nothing was saved\. Lower the learning rate"
    ):
        fine_tune(model, ROWS[:8], [], training, tmp_path / "run")


def test_generation_is_batched_greedy_and_order_preserving(tiny):
    model, params = tiny
    rows = ROWS[:5]
    batched = generate_responses(model, rows, params.profile.generation)
    one_by_one = [generate_responses(model, [r], params.profile.generation).texts[0] for r in rows]
    assert batched.texts == one_by_one  # left padding does not change what a row gets
    assert all(0 < n <= params.profile.generation.max_new_tokens for n in batched.new_tokens)
    assert model.tokenizer.padding_side == "left"


def static_against_generate(
    model, generation, graphs: bool, with_prefixes: bool = False, max_new_tokens: int = 40
) -> tuple[list, list]:
    """Answers of 10 rows of many prompt lengths from core/decode/static_cache.py and from transformers'
    generate() (greedy or beams, as `generation` says; every returned sequence), each cut after
    the stop token. A random model rarely ends its turn, so the stop token is the one most rows
    write early: rows end at many lengths, and some have ended at the decoder's first look (so
    the batch shrinks, if SHRINK_BELOW allows). `with_prefixes`: the last 0-4 tokens of each
    prompt are its answer's prefix, which the repetition rules count."""
    prompts = [model.encode(model.prompt_for(row))[: 20 + 7 * i] for i, row in enumerate(ROWS[:10])]
    prefix_lengths = [(3 * i) % 5 if with_prefixes else 0 for i in range(len(prompts))]
    batch = model.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(model.model.device)
    width = batch["input_ids"].shape[1]

    def plain(stop_id):
        from transformers import LogitsProcessorList

        rules = LogitsProcessorList(answer_only_rules(generation, [width - m for m in prefix_lengths]))
        with torch.inference_mode():
            out = model.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=[stop_id],
                use_cache=True,
                pad_token_id=model.tokenizer.pad_token_id,
                logits_processor=rules,
                **generate_kwargs(generation),
            )
        return out[:, width:].tolist()

    early = {}
    for ids in plain(model.tokenizer.convert_tokens_to_ids(model.end_of_turn)):
        for token in set(ids[: static_cache.CHECK_EVERY - 1]):
            early[token] = early.get(token, 0) + 1
    stop = min(early, key=lambda t: (-early[t], t))

    def upto_stop(ids):
        return ids[: ids.index(stop) + 1] if stop in ids else ids

    expected = [upto_stop(ids) for ids in plain(stop)]
    request = DecodeRequest(
        prompts,
        [("", prompt[len(prompt) - m :]) for prompt, m in zip(prompts, prefix_lengths, strict=True)],
        dataclasses.replace(generation, max_new_tokens=max_new_tokens, length_grid=[]),
        stop,
        model.tokenizer.pad_token_id,
    )
    fast, steps = static_cache.decode(model.model, request, graphs=graphs)
    if generation.sequences_per_row == 1:  # greedy stops at the first look after the last row's stop token
        assert steps == max(map(len, expected)) or steps % static_cache.CHECK_EVERY == 0
    assert len({len(ids) for ids in expected}) >= 3  # rows stopped at different lengths
    return [upto_stop(ids) for ids in fast], expected


# (beams, answers returned, penalty, n-gram size, answer prefixes)
STATIC_CASES = [
    (1, 1, 1.0, 0, False),
    (1, 1, 1.3, 0, False),
    (1, 1, 1.3, 3, True),
    (4, 1, 1.0, 0, False),
    (4, 1, 1.2, 3, True),
    (3, 2, 1.2, 0, True),
]


@pytest.mark.parametrize("beams, returned, penalty, ngram, prefixes", STATIC_CASES)
def test_static_cache_decoding_gives_generates_tokens(
    toy, caplog, monkeypatch, beams, returned, penalty, ngram, prefixes
):
    """core/decode/static_cache.py (here eagerly, on a CPU; tests/test_gpu.py replays it as a CUDA graph)
    against transformers' generate(), greedy and beam search (each prompt run once, its cache
    copied to its beams; the N best beams for MBR): the same tokens up to each row's stop token,
    with rows of many prompt lengths, rows that stop early (the batch shrinks), answer prefixes
    and the answer-only repetition rules."""
    model, params = toy
    model.attach_lora(seed=0)
    generation = dataclasses.replace(
        params.profile.generation,
        num_beams=beams,
        mbr_candidates=returned if returned > 1 else 0,
        repetition_penalty=penalty,
        no_repeat_ngram_size=ngram,
    )
    monkeypatch.setattr(static_cache, "SHRINK_BELOW", 0.95)  # drop finished rows as soon as one has finished
    with caplog.at_level("DEBUG", logger="core.decode.static_cache"):
        # beams finish later than greedy rows (a prompt is done once its beams cannot improve)
        fast, expected = static_against_generate(
            model, generation, graphs=False, with_prefixes=prefixes, max_new_tokens=40 if beams == 1 else 72
        )
    assert len(fast) == 10 * returned
    assert fast == expected
    assert "the batch shrinks" in caplog.text  # finished rows were dropped, and the rest went on right


def test_one_function_decides_whether_the_static_cache_decoder_runs(repo_params, monkeypatch):
    g = parse_params(copy.deepcopy(repo_params)).profile.generation  # beam search, static_cache: true
    assert static_cache.chosen_for(g, transformers_forward=True)
    assert not static_cache.chosen_for(g, transformers_forward=False)  # Unsloth's own forward
    assert not static_cache.chosen_for(dataclasses.replace(g, static_cache=False), True)
    assert not static_cache.chosen_for(dataclasses.replace(g, num_beams=1, do_sample=True), True)  # sampling
    assert not static_cache.chosen_for(dataclasses.replace(g, min_new_tokens=2), True)
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))  # it patches every model class
    assert not static_cache.chosen_for(g, True)


def test_the_decoders_attention_serves_one_model_for_one_block(toy, toy_checkpoints):
    """core/decode/attention.py: the decoding model attends with the decoder's function inside the
    block only (another model in the process keeps its own), and gets its own back after, on an
    error too; greedy decoding leaves a model that does not run sdpa as it is."""
    from transformers import AutoModelForCausalLM

    from core.decode.attention import DECODE_ATTENTION, decode_attention

    model, _ = toy
    inner, other = model.model, AutoModelForCausalLM.from_pretrained(toy_checkpoints["llama32"])
    before = inner.config._attn_implementation
    with pytest.raises(RuntimeError, match="stopped"), decode_attention(inner, beams=True):
        assert inner.config._attn_implementation == DECODE_ATTENTION
        assert other.config._attn_implementation == before != DECODE_ATTENTION
        raise RuntimeError("stopped")
    assert inner.config._attn_implementation == before
    inner.set_attn_implementation("eager")
    with decode_attention(inner, beams=False):
        assert inner.config._attn_implementation == "eager"
    with decode_attention(inner, beams=True):
        assert inner.config._attn_implementation == DECODE_ATTENTION
    assert inner.config._attn_implementation == "eager"
    inner.set_attn_implementation(before)


def test_beam_search_is_batch_independent_and_repeatable(tiny):
    model, params = tiny
    rows = ROWS[:4]
    beams = dataclasses.replace(
        params.profile.generation, num_beams=3, repetition_penalty=1.2, max_new_tokens=10, batch_size=4
    )
    batched = generate_responses(model, rows, beams)
    alone = [generate_responses(model, [r], beams).texts[0] for r in rows]
    assert batched.texts == alone  # left padding does not change what a row gets under beam search either
    assert generate_responses(model, rows, beams).texts == batched.texts  # and a rerun gives the same answers
    greedy = generate_responses(model, rows, dataclasses.replace(beams, num_beams=1))
    assert batched.texts != greedy.texts  # the beams really were searched
    assert batched.decoding_work_ratio >= 3 > greedy.decoding_work_ratio  # and what they cost is recorded


def test_mbr_returns_one_of_the_candidates_per_row(tiny):
    model, params = tiny
    rows = ROWS[:3]
    mbr = dataclasses.replace(params.profile.generation, num_beams=4, mbr_candidates=4, max_new_tokens=8)
    out = generate_responses(model, rows, mbr)
    assert len(out.texts) == 3 and all(0 < n <= 8 for n in out.new_tokens)
    sampled = dataclasses.replace(mbr, num_beams=1, do_sample=True, mbr_candidates=3)
    assert generate_responses(model, rows, sampled).texts == generate_responses(model, rows, sampled).texts  # seeded


def test_mbr_picks_the_consensus_candidate():
    # Normalised tokens; ROUGE-L F between two texts = LCS / length when both have the same length.
    candidates = [
        "fever cough give amoxicillin",  # A
        "fever cough give paracetamol",  # B: LCS with A 3 -> 3/4; with C 2 -> 2/4
        "rash itch apply cream",  # C: shares nothing with A ...
        "Fever, cough: give amoxicillin!",  # D: A again once normalised
    ]
    # mean ROUGE-L against the others: A = (3/4 + 0 + 1) / 3, B = (3/4 + 0 + 3/4) / 3, C = 0, D = A's
    from core.metrics.rouge import rouge_l_matrix

    matrix = rouge_l_matrix(candidates)
    assert matrix[0][1] == pytest.approx(0.75) and matrix[0][3] == pytest.approx(1.0) and matrix[0][2] == 0
    assert mbr_choice(candidates) == 0  # A and D tie; the earlier (the higher-ranked beam) wins
    # The top beam is not kept when the others disagree with it:
    # "p q r s" -> 0; "a b c d" -> (0 + 3/4 + 1) / 3 = 0.583; "a b c e" -> (0 + 3/4 + 3/4) / 3 = 0.5;
    # the last "a b c d" -> 0.583
    assert mbr_choice(["p q r s", "a b c d", "a b c e", "a b c d"]) == 1
    assert mbr_choice(["only one"]) == 0


def test_auto_batch_size_follows_free_memory_and_splits_evenly(repo_params):
    # 2 layers x (keys + values) x 2 KV heads x head_dim 4 x 4 bytes = 128 bytes a token
    config = SimpleNamespace(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=16, vocab_size=100
    )
    shared = parse_params(repo_params).profile.generation
    greedy = dict(max_new_tokens=6, length_grid=[], num_beams=1, mbr_candidates=0, min_new_tokens=0, do_sample=False)

    def request(rows: int, batch_size="auto", beams: int = 1) -> DecodeRequest:
        """`rows` prompts of 10 tokens, answers of up to 6."""
        generation = dataclasses.replace(shared, **{**greedy, "batch_size": batch_size, "num_beams": beams})
        return plain_request([[1] * 10] * rows, generation, stop_id=0)

    per_row = 2 * (10 + 6) * 128 + 3 * 4 * 100  # the cache counted twice, plus the logits buffers
    free = int(per_row * 10 / AUTO_MEMORY_SHARE) + 1  # room for 10 rows
    assert rows_per_batch(request(25), config, torch.float32, free) == 9  # 3 batches of 9, 8, 8, not 10, 10, 5
    assert rows_per_batch(request(7), config, torch.float32, free) == 7
    assert rows_per_batch(request(25), config, torch.float32, 1) == 1  # never below one row
    assert rows_per_batch(request(25), config, torch.bfloat16, free) == 13  # half the bytes: 2 batches
    assert rows_per_batch(request(40), config, torch.float32, None) == 14  # no GPU: up to 16, evenly
    assert rows_per_batch(request(40, batch_size=5), config, torch.float32, 1) == 5  # a number is taken as given
    assert rows_per_batch(request(25, beams=2), config, torch.float32, free) == 5  # 2 beams a row: 5 rows fit
    # a cache allocated whole (core/decode/static_cache.py) is counted once: 16 * 128 + 1200 bytes a row
    # instead of 2 * 16 * 128 + 1200, so 16 rows fit where 10 did: 2 batches of 13 and 12
    assert rows_per_batch(request(25), config, torch.float32, free, prompt_shared=True) == 13
    # and a row's beams share its prompt there: (10 + 4 x 6) x 128 + 4 x 1200 bytes a row with 4 beams, so 5 rows fit
    assert rows_per_batch(request(25, beams=4), config, torch.float32, free, prompt_shared=True) == 5


def test_auto_batch_halves_on_out_of_memory_and_keeps_row_order(tiny, monkeypatch):
    model, params = tiny
    rows = ROWS[:5]
    pinned = generate_responses(model, rows, dataclasses.replace(params.profile.generation, batch_size=2))
    decode = static_cache.decode
    tried = []

    def decode_within_two_rows(model, request, *args, **kwargs):
        tried.append(len(request.prompts))
        if len(request.prompts) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(model, request, *args, **kwargs)

    monkeypatch.setattr(static_cache, "decode", decode_within_two_rows)
    auto = generate_responses(model, rows, dataclasses.replace(params.profile.generation, batch_size="auto"))
    assert tried == [5, 2, 2, 1]  # 5 rows at once, then halved: the same batches as batch_size 2
    assert auto.texts == pinned.texts and auto.batch_size == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a pinned batch size is the user's call: no retry
        generate_responses(model, rows, dataclasses.replace(params.profile.generation, batch_size=4))


def test_a_saved_adapter_refuses_another_model(tiny, tmp_path, repo_params, tiny_checkpoints):
    model, params = tiny
    model.attach_lora(seed=0)
    model.save_adapter(tmp_path / "adapter")
    other_family = "llama32" if params.profile.family == "qwen3" else "qwen3"
    other = tiny_params(repo_params, other_family, tiny_checkpoints[other_family])
    with pytest.raises(ValueError, match="rerun the finetune stage"):
        model_for(other.profile, other.prompt.system).load_adapter(tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="run the finetune stage first"):
        model_for(params.profile, params.prompt.system).load_adapter(tmp_path / "nothing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_unsloth_without_cuda_fails_in_one_sentence(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["base"]["backend"] = "unsloth"
    params = parse_params(raw)
    with pytest.raises(BackendError) as err:
        model_for(params.profile, params.prompt.system)
    message = str(err.value)
    assert "needs an NVIDIA GPU with CUDA" in message and "backend: hf" in message
    assert message.count(". ") == 0 and "\n" not in message


@pytest.mark.parametrize(
    "capability,expected",
    [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
    ids=["T4", "A100", "H100"],
)
def test_auto_dtype_is_bfloat16_only_where_the_card_has_it(monkeypatch, capability, expected):
    """A T4 (compute capability 7.5) trains and answers in float16. torch.cuda.is_bf16_supported() says yes
    there (bfloat16 can be emulated), and Unsloth replaces it with a function that takes no arguments: neither
    may decide."""
    from core.models import backends

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # as emulation, or Unsloth's own, answers
    assert backends.resolve_dtype("auto") == expected
    assert backends.resolve_dtype("float32") == torch.float32


def test_auto_answers_with_transformers_on_a_gpu_and_trains_with_unsloth(monkeypatch):
    """The measured choice (core/models/backends.py): on a GPU, answering takes transformers+peft (its
    greedy decoding runs as a CUDA graph) without importing Unsloth; training takes Unsloth."""
    import sys

    from core.models import backends

    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    tried = []
    monkeypatch.setattr(backends.UnslothBackend, "__init__", lambda self: tried.append("unsloth"))
    assert backends.resolve_backend("auto", "generate").name == "hf" and tried == []
    assert backends.resolve_backend("auto", "train").name == "unsloth" and tried == ["unsloth"]
    assert backends.resolve_backend("unsloth", "generate").name == "unsloth"  # a named backend is taken as named
    assert backends.resolve_backend("hf", "train").name == "hf"
    monkeypatch.undo()  # the real UnslothBackend from here: choosing it would import unsloth
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.resolve_backend("auto", "train").name == "hf"
    assert "unsloth" not in sys.modules


def test_every_family_defines_its_template_tokens():
    for name, family in FAMILIES.items():
        assert family.chat_template and family.end_of_turn and family.pad_token != family.end_of_turn, name


def test_the_best_epoch_by_validation_loss_is_kept(toy, tmp_path, repo_params):
    """Three epochs; the third is spoilt on purpose (its LoRA weights scrambled before it is
    evaluated), so its validation loss is the worst: the weights kept are an earlier epoch's,
    exactly, and the metrics say which."""
    from transformers import TrainerCallback

    model, params = toy
    training = tiny_params(
        repo_params, params.profile.family, params.profile.name, epochs=3, learning_rate=1e-3, batch_size=8
    ).profile.training
    assert training.keep_best_epoch

    class SpoilLastEpochAndRecord(TrainerCallback):
        weights = {}

        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) == 3:
                with torch.no_grad():
                    for name, p in model.model.named_parameters():
                        if "lora_B" in name:
                            p.add_(torch.randn_like(p) * 5)

        def on_evaluate(self, args, state, control, **kwargs):
            self.weights[round(state.epoch)] = {
                n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad
            }

    record = SpoilLastEpochAndRecord()
    metrics = fine_tune(model, ROWS[:16], ROWS[16:24], training, tmp_path / "run", callbacks=[record])
    losses = metrics["val_loss_by_epoch"]
    assert len(losses) == 3 and losses[2] > min(losses[:2])
    best = 1 + losses.index(min(losses))
    assert (
        metrics["best_epoch"] == best
        and metrics["val_loss"] == min(losses)
        and metrics["val_loss_last_epoch"] == losses[2]
    )
    kept = {n: p for n, p in model.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(kept[n], w) for n, w in record.weights[best].items())
    assert not all(torch.equal(kept[n], w) for n, w in record.weights[3].items())
    assert (tmp_path / "run" / "best_epoch.pt").exists()  # for a run resumed from a checkpoint
