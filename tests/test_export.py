"""The export stage's model (core/export/build.py) and its engine (core/export/runtime.py,
stages/ask.py), on tiny checkpoints."""

import csv
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from core.config import parse_params
from core.data import read_vignettes
from core.decode.answer import generate_responses
from core.errors import ArtifactError
from core.export.build import build_onnx, export_profile, merge
from core.export.runtime import ExportedModel, StaleExport
from core.metrics.echo import prompt_echo
from core.models.base import BaseUnslothModel
from core.models.families import model_for
from core.prompts import chat_messages, render_chat
from tests.checkpoints import REPO
from tests.conftest import tiny_params

ROWS = read_vignettes(REPO / "data" / "sample" / "train.csv", labelled=True)[:4]


def make_adapter(params, directory):
    """A LoRA adapter whose weights are not zero (a fresh one merges to the base model unchanged)."""
    model = model_for(params.profile, params.prompt.system)
    model.attach_lora(seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, weight in model.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.2)
    model.save_adapter(directory)
    model.cleanup_model()
    BaseUnslothModel.clear_cache()


def export(params, adapter, root, precision):
    model = model_for(export_profile(params.profile), params.prompt.system)
    parameters = merge(model, adapter, root / "merged")
    build_onnx(model, root / "merged", root / precision, precision, adapter, parameters)
    return model


@pytest.fixture(scope="module")
def exported(repo_params, tiny_checkpoints, tmp_path_factory):
    """The tiny Qwen3 with a random adapter, exported unquantized and int8, and its PyTorch model."""
    root = tmp_path_factory.mktemp("export")
    params = tiny_params(repo_params, "qwen3", tiny_checkpoints["qwen3"])
    make_adapter(params, root / "adapter")
    model = export(params, root / "adapter", root, "fp32")
    export(params, root / "adapter", root, "int8").cleanup_model()
    yield params, model, root
    model.cleanup_model()
    BaseUnslothModel.clear_cache()


def greedy(params, max_new_tokens=12):
    return dataclasses.replace(
        params.profile.generation, max_new_tokens=max_new_tokens, num_beams=1, repetition_penalty=1.0, do_sample=False
    )


def test_unquantized_export_answers_with_the_pytorch_tokens(exported):
    params, model, root = exported
    engine = ExportedModel(root / "fp32", adapter=root / "adapter")
    for row in ROWS:  # the prompt the engine builds without transformers is training's, token for token
        assert engine.prompt_ids(row) == model.encode(model.prompt_for(row))
    g = greedy(params)
    reference = generate_responses(model, ROWS, g)  # the merged model: the adapter folded in
    answers = engine.answer_rows(ROWS, g, progress=False)
    assert answers.texts == reference.texts and answers.new_tokens == reference.new_tokens
    assert len(answers.row_seconds) == len(ROWS) and answers.batch_size == 1


def test_unquantized_export_applies_the_answer_only_rules_and_the_prefix_as_pytorch_does(exported):
    """Greedy decoding with the repetition rules on the answer only and the echo prefix: the engine
    sets them on the logits itself (ONNX Runtime GenAI's own rules would count the prompt), and
    gives PyTorch's tokens."""
    params, model, root = exported
    engine = ExportedModel(root / "fp32", adapter=root / "adapter")
    for prefix in ("none", "echo"):
        g = dataclasses.replace(
            greedy(params, max_new_tokens=24), repetition_penalty=1.3, no_repeat_ngram_size=3, answer_prefix=prefix
        )
        reference = generate_responses(model, ROWS, g)
        answers = engine.answer_rows(ROWS, g, progress=False)
        assert answers.texts == reference.texts and answers.token_ids == reference.token_ids, prefix
        assert answers.prefixes == reference.prefixes
    assert all(text.startswith("summary ") for text in answers.texts)
    plain = generate_responses(model, ROWS, dataclasses.replace(g, repetition_penalty=1.0, no_repeat_ngram_size=0))
    assert plain.texts != reference.texts  # the rules changed what was written


def test_unquantized_export_searches_beams_as_pytorch_does(exported):
    """Beam search (core/export/beams.py): the tokens of PyTorch's beams, with and without the
    answer-only rules and the echo prefix, ended and cut by length alike."""
    params, model, root = exported
    engine = ExportedModel(root / "fp32", adapter=root / "adapter")
    for beams, rules, prefix, early in ((2, False, "none", False), (4, True, "echo", False), (3, True, "none", True)):
        g = dataclasses.replace(
            greedy(params, max_new_tokens=20),
            num_beams=beams,
            repetition_penalty=1.3 if rules else 1.0,
            no_repeat_ngram_size=3 if rules else 0,
            answer_prefix=prefix,
            early_stopping=early,
        )
        reference = generate_responses(model, ROWS, g)
        answers = engine.answer_rows(ROWS, g, progress=False)
        assert answers.token_ids == reference.token_ids, (beams, rules, prefix, early)
        assert answers.texts == reference.texts


def test_export_and_pytorch_write_as_many_model_tokens_with_the_default_decoding(exported, repo_params):
    """The default profile's decoding (echo prefix, 4 beams, the rules) at 64 new tokens: the int8
    export's answers carry as many model tokens as PyTorch's, within 10 % a row on average (ONNX
    Runtime GenAI's own beam search ended after about one token: issue 32)."""
    params, model, root = exported
    g = dataclasses.replace(parse_params(repo_params).profile.generation, max_new_tokens=64, length_grid=[])
    engine = ExportedModel(root / "int8", adapter=root / "adapter")
    reference = generate_responses(model, ROWS, g)
    answers = engine.answer_rows(ROWS, g, progress=False)
    ours, theirs = sum(answers.new_tokens) / len(ROWS), sum(reference.new_tokens) / len(ROWS)
    assert theirs > 8, reference.new_tokens  # a real length to compare
    assert abs(ours - theirs) <= 0.1 * theirs, (answers.new_tokens, reference.new_tokens)


def test_the_same_adapter_gives_the_same_export_byte_for_byte(exported, tmp_path):
    """The export stage rerun on the same merged model writes the same files (DVC sees no change)."""
    params, model, root = exported
    parameters = json.loads((root / "int8" / "edge.json").read_text())["parameters"]
    build_onnx(model, root / "merged", tmp_path / "int8", "int8", root / "adapter", parameters)
    first = {p.name: p.read_bytes() for p in (root / "int8").iterdir()}
    again = {p.name: p.read_bytes() for p in (tmp_path / "int8").iterdir()}
    assert set(first) == set(again) and len(first) > 3
    assert [name for name in first if first[name] != again[name]] == []
    # nor does it depend on this project's git commit (the builder stamps the commit of the repository
    # it finds itself in, and a virtual environment inside the checkout is in ours)
    import onnx

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    stamp = onnx.load(str(tmp_path / "int8" / "model.onnx"), load_external_data=False).producer_version
    assert stamp and (not head or head[:7] not in stamp), stamp


def test_int8_export_stays_close_to_the_pytorch_logits(exported):
    """int8 weights move the logits a little, which can flip a near tie between two tokens (a random
    model has many). The bound documented in docs/deploy.md: at each prompt's first answer token the
    int8 logits correlate at 0.99 or more with PyTorch's, and their best token is among PyTorch's top 5."""
    import numpy as np
    import onnxruntime_genai as og

    _, model, root = exported
    engine = ExportedModel(root / "int8")
    for row in ROWS:
        ids = engine.prompt_ids(row)
        params = og.GeneratorParams(engine.genai_model)
        params.set_search_options(max_length=len(ids) + 2)
        generator = og.Generator(engine.genai_model, params)
        generator.append_tokens(ids)
        exported_logits = np.asarray(generator.get_logits()).reshape(-1)
        with torch.no_grad():
            reference = model.model(torch.tensor([ids])).logits[0, -1].numpy()
        assert np.corrcoef(exported_logits, reference)[0, 1] >= 0.99
        assert int(np.argmax(exported_logits)) in np.argsort(-reference)[:5]


def test_streamed_text_is_the_answer(exported):
    params, _, root = exported
    engine = ExportedModel(root / "int8")
    pieces = []
    text, ids = engine.answer(ROWS[0], greedy(params, 10), on_text=pieces.append)
    assert "".join(pieces) == text and len(pieces) > 1 and len(ids) == 10


@pytest.mark.faults
def test_a_missing_or_stale_export_names_the_rebuild_command(exported, tmp_path):
    _, _, root = exported
    with pytest.raises(StaleExport, match="dvc repro export"):
        ExportedModel(tmp_path / "nothing")
    changed = tmp_path / "adapter"
    shutil.copytree(root / "adapter", changed)
    config = json.loads((changed / "adapter_config.json").read_text())
    (changed / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 3}))
    with pytest.raises(StaleExport, match=r"stale.*dvc repro export"):
        ExportedModel(root / "int8", adapter=changed)


def record_in_lock(workspace, output: str) -> None:
    """dvc.lock and DVC's cache recording `output` as it is now, as `dvc commit` records a stage's output (a
    DVC project of one stage that makes it)."""
    from tests.dvc_helpers import run_dvc

    if not (workspace / ".dvc").exists():
        run_dvc(workspace, "init", "--no-scm", "-q")
    (workspace / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"align": {"cmd": "true", "outs": [output]}}}))
    run_dvc(workspace, "commit", "-f", "-q", "align")


@pytest.mark.faults
def test_an_adapter_changed_behind_dvcs_back_is_named_not_called_a_stale_export(exported, tmp_path, monkeypatch):
    """The export's adapter digest differs: where dvc.lock records other bytes for the adapter's
    files, the cause is the adapter (named, with the command that restores it), not the export,
    whose rebuild would change nothing; where dvc.lock records the new adapter, the export is stale."""
    _, _, root = exported
    monkeypatch.chdir(tmp_path)
    aligned = tmp_path / "models" / "aligned"
    shutil.copytree(root / "adapter", aligned)
    weights = aligned / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # the last weights' bytes: still a valid file, other weights
    record_in_lock(tmp_path, "models/aligned")  # the adapter the pipeline wrote
    weights.chmod(0o644)  # DVC's cache may leave it read-only
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as caught:
        ExportedModel(root / "int8", adapter="models/aligned")
    assert not isinstance(caught.value, StaleExport)
    assert str(caught.value).startswith("models/aligned/adapter_model.safetensors: not what dvc.lock records")
    assert "dvc checkout --force models/aligned" in str(caught.value)
    record_in_lock(tmp_path, "models/aligned")  # the pipeline wrote this adapter: the export is stale
    with pytest.raises(StaleExport, match=r"stale.*dvc repro export"):
        ExportedModel(root / "int8", adapter="models/aligned")


@pytest.mark.parametrize("family", ["qwen3", "llama32"])
def test_prompts_render_without_transformers_as_with_it(family, repo_params, tiny_checkpoints):
    params = tiny_params(repo_params, family, tiny_checkpoints[family])
    model = model_for(params.profile, params.prompt.system)
    model.load()
    for row in ROWS + [{"Prompt": "  A child with fever.  "}]:
        assert render_chat(
            model.chat_template, chat_messages(model.system_prompt, model._create_input_prompt(row))
        ) == model.prompt_for(row)
    model.cleanup_model()


def ask(root, *args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "stages.ask", "--export", str(root / "int8"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_ask_answers_a_vignette_and_a_file_and_refuses_an_empty_one(exported, tmp_path):
    _, _, root = exported
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # the decoding ask follows (beam search here)
    done = ask(
        root, "A 3 year old with fever and fast breathing. What should I do?", "--max-new-tokens", "8", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    done = ask(root, "--file", str(rows), "--max-new-tokens", "4", "--report", str(tmp_path / "r.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Master_Index,Clinician" and [line.split(",")[0] for line in lines[1:]] == [
        r["Master_Index"] for r in ROWS[:2]
    ]
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["row_seconds"]) == 2 and 0 < report["peak_rss_mb"] < 2048
    assert report["torch_imported"] is False
    prompts_only = tmp_path / "mine.csv"  # only a Prompt column: rows are numbered
    prompts_only.write_text('Prompt\n"A child, 2 years, fever, cough"\n"A woman, 30, headache, BP 170/110"\n')
    done = ask(root, "--file", str(prompts_only), "--max-new-tokens", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split(",")[0] for line in done.stdout.splitlines()] == ["Master_Index", "1", "2"]
    # 0 new tokens (a length predict may choose): the echo prefix alone, without running the model, shown in
    # the case's own words and numbers (the host's normalisation, "bp 170110", is for the submission only)
    done = ask(root, "--file", str(prompts_only), "--max-new-tokens", "0", cwd=tmp_path)
    assert done.returncode == 0 and list(csv.reader(done.stdout.splitlines()))[1:] == [
        ["1", "Summary: A child, 2 years, fever, cough"],
        ["2", "Summary: A woman, 30, headache, BP 170/110"],
    ], done.stderr
    prompts_only.write_text("Prompt\nA child\n  \n")
    done = ask(root, "--file", str(prompts_only), cwd=tmp_path)
    assert (
        done.returncode == 1
        and done.stderr.strip() == f"ERROR stages: {prompts_only}: row 2, column 'Prompt': empty vignette"
    )
    # a vignette far beyond the window: its middle cut, one warning, an answer
    done = ask(
        root,
        "A 3 year old with fever. " + "The mother adds more history. " * 800 + "What should I do?",
        "--max-new-tokens",
        "4",
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert [line.split(":")[0] for line in done.stderr.splitlines()] == ["WARNING core.prompts"], done.stderr
    done = ask(root, "   ", cwd=tmp_path)
    assert (
        done.returncode == 1
        and done.stderr.strip() == "ERROR stages: the vignette is empty: there is nothing to answer"
    )
    assert not done.stdout


@pytest.mark.faults
def test_a_damaged_adapter_is_named_with_its_fix_by_both_engines(exported, tmp_path):
    """A truncated adapter_model.safetensors: one line naming the file and `dvc checkout`, from the
    engine (ask, deploy) and from the PyTorch model (predict, export) alike, not 'stale export'."""
    params, _, root = exported
    damaged = tmp_path / "aligned"
    shutil.copytree(root / "adapter", damaged)
    weights = damaged / "adapter_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(ArtifactError) as engine_error:
        ExportedModel(root / "int8", adapter=damaged)
    model = model_for(params.profile, params.prompt.system)
    with pytest.raises(ArtifactError) as torch_error:
        model.load_adapter(damaged)
    for error in (engine_error.value, torch_error.value):
        message = str(error)
        assert not isinstance(error, StaleExport) and "\n" not in message
        assert message.startswith(f"{weights}: damaged (") and f"dvc checkout --force {damaged}" in message
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        ExportedModel(root / "int8", adapter=damaged)


def test_an_over_long_vignette_loses_its_middle_in_both_engines_as_in_training(exported, caplog):
    """A vignette far beyond the window the model was tuned in (max_seq_length, recorded in
    edge.json): both engines cut the middle of its prompt to fit the window with the answer, warn
    once, and give the same answer."""
    params, model, root = exported
    long_row = {**ROWS[0], "Prompt": ROWS[0]["Prompt"] + " The mother adds more history." * 600}
    engine = ExportedModel(root / "fp32", adapter=root / "adapter")
    assert engine.max_seq_length == params.profile.max_seq_length
    assert len(engine.prompt_ids(long_row)) > 3 * params.profile.max_seq_length
    g = greedy(params, 8)
    with caplog.at_level(logging.WARNING):
        reference = generate_responses(model, [long_row], g)
        text, ids = engine.answer(long_row, g)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warned
        == [
            f"1 of 1 prompts do not fit in max_seq_length={params.profile.max_seq_length} with their answer: "
            f"the middle of each was cut, as training cuts it ({long_row['Master_Index']})"
        ]
        * 2
    )
    assert ids == reference.token_ids[0] and text == reference.texts[0]
    # with the echo prefix, as long as the vignette: the model sees its end, the answer holds it whole
    g = dataclasses.replace(g, answer_prefix="echo")
    reference = generate_responses(model, [long_row], g)
    text, ids = engine.answer(long_row, g)
    assert ids == reference.token_ids[0] and text == reference.texts[0] and text.endswith(reference.texts[0][-20:])
    assert text.startswith("summary " + prompt_echo(long_row))


def test_an_answer_holds_no_replacement_character(exported):
    """A byte-level token alone (half of a character's UTF-8 bytes) decodes to U+FFFD: neither
    engine lets it into an answer."""
    _, model, root = exported
    engine = ExportedModel(root / "int8")
    stray = model.tokenizer.convert_tokens_to_ids("Ã")  # byte 0xC3: the first half of é, alone
    ids = model.encode("fever") + [stray] + model.encode(" and cough") + [stray]
    assert "\ufffd" in model.tokenizer.decode(ids)
    assert model.decode(ids) == engine.decode(ids) == "fever and cough"
