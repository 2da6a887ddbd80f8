"""The align stage's parts: preference pairs from the labelled rows, and DPO on the SFT adapter."""

import dataclasses

import pytest
import torch

from core.data import read_vignettes
from core.decode.answer import generate_responses
from core.models.base import BaseUnslothModel
from core.models.families import model_for
from core.train.dpo import align, build_pairs, preference_examples, sample_pairs
from tests.checkpoints import REPO
from tests.conftest import tiny_params

HEADER = (
    "Master_Index,County,Health level,Years of Experience,Prompt,Nursing Competency,Clinical Panel,Clinician,"
    "GPT4.0,LLAMA,GEMINI\n"
)


def test_pairs_use_every_usable_llm_answer_and_count_the_rows_without_one(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        HEADER
        + "\n".join(
            [
                'ID_1,Kiambu,Health Centre,5,"A child with fever.",Child health,PAEDIATRICS,"Give ORS.",'
                '"**Summary** long",,"Gemini text"',
                # no LLM answer
                'ID_2,Kiambu,Health Centre,5,"An adult with cough.",Adult health,MEDICINE,"Check TB.",,,',
                # GPT = chosen, normalised
                'ID_3,Kiambu,Health Centre,5,"A pregnant woman.",Maternal,OBSTETRICS,"Refer.","refer","Llama text",""',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    rows = read_vignettes(path, labelled=True)
    pairs = build_pairs(rows, ["llm"])
    assert [(p["row"]["Master_Index"], p["source"], p["rejected"]) for p in pairs.pairs] == [
        ("ID_1", "GPT4.0", "**Summary** long"),
        ("ID_1", "GEMINI", "Gemini text"),
        ("ID_3", "LLAMA", "Llama text"),
    ]
    assert all(p["chosen"] == p["row"]["Clinician"] for p in pairs.pairs)
    assert pairs.skipped == ["ID_2"] and pairs.by_source == {"GPT4.0": 1, "GEMINI": 1, "LLAMA": 1}

    # A file without the LLM columns is not an error: every row is counted as without a pair.
    bare = tmp_path / "bare.csv"
    bare.write_text(
        HEADER.replace(",GPT4.0,LLAMA,GEMINI", "") + 'ID_9,K,HC,1,"A case.",C,P,"Answer."\n', encoding="utf-8"
    )
    assert build_pairs(read_vignettes(bare, labelled=True), ["llm"]).skipped == ["ID_9"]

    # The model's own answers as rejected ones (on-policy): one pair a row, unless it is the clinician's text.
    own = build_pairs(rows, ["sft"], {"ID_1": "Paracetamol.", "ID_2": "check tb", "ID_3": ""})
    assert [(p["row"]["Master_Index"], p["source"]) for p in own.pairs] == [("ID_1", "sft")]
    assert own.skipped == ["ID_2", "ID_3"]
    assert [p["source"] for p in sample_pairs(pairs.pairs, 2, seed=0)] in (
        ["GPT4.0", "GEMINI"],
        ["GPT4.0", "LLAMA"],
        ["GEMINI", "LLAMA"],
    )


@pytest.fixture
def tiny_sft(repo_params, toy_checkpoints, tmp_path):
    """A tiny Qwen3 (toy tokenizer) with a trained-looking SFT adapter saved, and DPO settings of two steps."""
    params = tiny_params(repo_params, "qwen3", toy_checkpoints["qwen3"])
    model = model_for(params.profile, params.prompt.system)
    model.load()
    model.attach_lora(seed=0)
    with torch.no_grad():  # LoRA's B starts at zero; make the adapter not the identity
        for name, weight in model.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
    model.save_adapter(tmp_path / "sft")
    model.cleanup_model()
    BaseUnslothModel.clear_cache()
    yield params, tmp_path / "sft"
    BaseUnslothModel.clear_cache()


def test_dpo_moves_the_sft_adapter_and_keeps_the_sft_encoding(tiny_sft, tmp_path):
    params, sft = tiny_sft
    rows = read_vignettes(REPO / "data/sample/train.csv", labelled=True)[:8]
    pairs = build_pairs(rows, ["llm"]).pairs
    model = model_for(params.profile, params.prompt.system)
    model.load_adapter(sft, trainable=True)
    before = {n: w.detach().clone() for n, w in model.model.named_parameters() if "lora_" in n}

    # the pair's prompt is the tokens prediction feeds; the answers end with the end-of-turn token
    examples, left_out = preference_examples(model, pairs[:2])
    assert left_out == 0
    assert examples["prompt_ids"][0] == model.encode(model.prompt_for(pairs[0]["row"]))
    end = model.encode(model.end_of_turn)
    assert examples["chosen_ids"][0][-len(end) :] == end
    assert len(examples["rejected_ids"][0]) <= len(examples["chosen_ids"][0])  # cut to the chosen's length

    # the schedule comes from align's own keys, as SFT's from training's (it was hard-coded: linear, 10 % warmup)
    config = dataclasses.replace(
        params.align,
        method="dpo",
        max_steps=2,
        batch_size=2,
        grad_accum=1,
        learning_rate=1e-2,
        lr_scheduler="constant",
        warmup_ratio=0.0,
    )
    metrics = align(model, pairs[:4], pairs[4:6], config, tmp_path / "run")
    history = model.training_log
    assert metrics["steps"] == 2 and metrics["pairs"] == {"train": 4, "val": 2}
    assert [e["learning_rate"] for e in history if "loss" in e] == [1e-2, 1e-2]
    assert set(model.model.peft_config) == {"default"}  # trl's frozen reference copy is gone
    changed = [n for n, w in model.model.named_parameters() if "lora_" in n and not torch.equal(w, before[n])]
    assert changed, "DPO left the adapter as it was"
    assert any("rewards/margins" in entry for entry in history)

    model.save_adapter(tmp_path / "aligned")
    assert (tmp_path / "aligned" / "chat_template.jinja").read_text() == (sft / "chat_template.jinja").read_text()
    model.cleanup_model()


@pytest.mark.slow
def test_align_stage_none_is_the_sft_adapter_and_dpo_without_pairs_stops_keeping_it(finished_workspace):
    import csv
    import io
    import json

    import yaml

    from core import atomic as core_io
    from core.config import load_params
    from core.predictions import Prediction, predictions_csv
    from tests.dvc_helpers import edit_params, run_dvc

    workspace = finished_workspace  # `dvc repro` on the tiny Qwen3 with align.method: none, committed
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    assert outs["models/aligned"] == outs["models/adapter"]  # method none: the same files
    assert json.loads((workspace / "metrics/align.json").read_text()) == {"align_method": "none"}

    # predict through the stage equals predict straight from the SFT adapter: the stage changes nothing
    params = load_params(workspace / "params.yaml")
    model = model_for(params.profile, params.prompt.system)
    model.load_adapter(workspace / "models/adapter")
    val = core_io.read_jsonl(workspace / "data/prepared/val.jsonl")
    out = generate_responses(model, val, params.profile.generation)
    direct = predictions_csv(val, [Prediction(*f) for f in zip(out.texts, out.new_tokens, out.stopped, strict=True)])
    assert (workspace / "data/predictions/val.csv").read_text(encoding="utf-8") == direct
    model.cleanup_model()
    BaseUnslothModel.clear_cache()

    # DPO under `dvc exp run` (its record, its plots, predict on its adapter): tests/test_experiments.py's
    # tiny-qwen3. Method dpo on a train file with no LLM answer: one line, and the outputs kept
    edit_params(workspace, lambda raw: raw["align"].update(method="dpo"))
    train_csv = workspace / "data/sample/train.csv"
    table = list(csv.DictReader(io.StringIO(train_csv.read_text(encoding="utf-8"))))
    for row in table:
        row.update({"GPT4.0": "", "LLAMA": "", "GEMINI": ""})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    train_csv.write_text(buffer.getvalue(), encoding="utf-8")
    before = (workspace / "models/aligned/adapter_model.safetensors").read_bytes()
    done = run_dvc(workspace, "repro", check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR stages:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr
    assert "no preference pair for align.method: dpo" in errors[0] and "set align.method: none" in errors[0]
    assert (workspace / "models/aligned/adapter_model.safetensors").read_bytes() == before
