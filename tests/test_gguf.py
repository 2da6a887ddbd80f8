"""The GGUF export (core/export/gguf_file.py, stages/gguf.py) on tiny checkpoints of both architectures with
their real tokenizers: read back through transformers' GGUF loader (and llama.cpp where it is installed), the
file answers with PyTorch's greedy tokens (f16: exactly; q8_0: within the tolerance below), its own chat template
renders training's prompt byte for byte, as does the Modelfile's, and it stops at the end of turn. A file
without the template or the stop token fails the check the stage runs before anything lands."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.data import read_vignettes
from core.errors import UserError
from core.export.gguf_file import Chat, write_gguf
from core.export.gguf_read import metadata, problems
from core.export.gguf_transformers import load_with_transformers
from core.export.modelfile import go_template, render_go
from core.models.families import FAMILIES
from core.prompts import chat_messages, render_chat, user_message
from tests.checkpoints import REPO

pytestmark = pytest.mark.slow
SYSTEM = "You are a clinician. Answer briefly."
ROWS = read_vignettes(REPO / "data/sample/train.csv", labelled=True)[:6]
NEW_TOKENS = 16
# q8_0 against float32 PyTorch, each answer position given PyTorch's tokens before it (teacher-forced, so one
# early flip does not count twice): the share of positions whose top token agrees. On these random tiny weights
# (flat logits: the hardest case) 0.91 was measured for both families; the fine-tuned SmolLM2-135M gave 0.993.
Q8_0_AGREEMENT = 0.8


def chat_for(family: str, tokenizer, template: str | None = "family", stop: bool = True) -> Chat:
    cls = FAMILIES[family]
    stop_id, pad_id = tokenizer.convert_tokens_to_ids([cls.end_of_turn, cls.pad_token])
    return Chat(
        cls.chat_template if template == "family" else template,
        SYSTEM,
        family,
        stop_id if stop else None,
        pad_id,
        tokenizer.bos_token_id,
    )


@pytest.fixture(scope="module", params=["qwen3", "llama32"])
def written(request, tiny_checkpoints, tmp_path_factory):
    """(family, checkpoint, tokenizer, {precision: GGUF path}) of one family's tiny stand-in."""
    family = request.param
    checkpoint = tiny_checkpoints[family]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    folder = tmp_path_factory.mktemp(f"gguf-{family}")
    files = {}
    for precision in ("f16", "q8_0"):
        files[precision] = folder / f"model-{precision}.gguf"
        write_gguf(checkpoint, files[precision], precision, chat_for(family, tokenizer))
    return family, checkpoint, tokenizer, files


def prompt_ids(family: str, tokenizer, row: dict) -> torch.Tensor:
    text = render_chat(FAMILIES[family].chat_template, chat_messages(SYSTEM, user_message(row)))
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def greedy(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)


def test_f16_answers_with_pytorchs_greedy_tokens_and_q8_0_within_the_tolerance(written):
    family, checkpoint, tokenizer, files = written
    pytorch = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    rounded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():  # the weights f16 holds: the same numbers, so the very same tokens
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
    f16, q8_0 = load_with_transformers(files["f16"]), load_with_transformers(files["q8_0"])
    agreement = []
    for row in ROWS:
        ids = prompt_ids(family, tokenizer, row)
        assert greedy(f16, ids).tolist() == greedy(rounded, ids).tolist(), row["Master_Index"]
        answer = greedy(pytorch, ids)
        with torch.no_grad():
            expected = pytorch(answer).logits[0, ids.shape[1] - 1 : -1].argmax(-1)
            found = q8_0(answer).logits[0, ids.shape[1] - 1 : -1].argmax(-1)
        agreement.append((expected == found).float().mean().item())
    assert sum(agreement) / len(agreement) >= Q8_0_AGREEMENT, agreement


def test_the_files_template_and_the_modelfiles_render_trainings_prompt(written):
    family, _, tokenizer, files = written
    template = FAMILIES[family].chat_template
    messages = chat_messages(SYSTEM, user_message(ROWS[0]))
    training = render_chat(template, messages)
    found = metadata(files["q8_0"])
    # with the system turn, and without it (a chat in llama.cpp or LM Studio): the file's default is ours
    assert render_chat(found["chat_template"], messages) == training
    assert render_chat(found["chat_template"], messages[1:]) == training
    assert problems(files["q8_0"], messages, training, chat_for(family, tokenizer).stop_id) == []
    assert render_go(go_template(template), SYSTEM, user_message(ROWS[0])) == training
    if family == "qwen3":  # thinking off as in training: the assistant's turn opens with an empty think block
        assert training.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not found["add_bos"] and training.count(tokenizer.bos_token or "\0") <= 1  # one begin-of-text at most


def test_generation_stops_at_the_end_of_turn(written):
    family, _, tokenizer, files = written
    stop_id = chat_for(family, tokenizer).stop_id
    found = metadata(files["f16"])
    assert found["eos"] == found["eot"] == stop_id and found["pad"] != stop_id
    model = load_with_transformers(files["f16"])
    assert model.generation_config.eos_token_id == stop_id  # what the file told the loader

    class EndAtThird:  # the end of turn becomes the likeliest token at the third step
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - start == 2:
                scores[:, stop_id] = scores.max() + 10
            return scores

    ids = prompt_ids(family, tokenizer, ROWS[0])
    start = ids.shape[1]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, logits_processor=[EndAtThird()])
    assert out.shape[1] - start == 3 and out[0, -1].item() == stop_id


def test_a_file_without_its_template_or_stop_token_fails_the_check(written, tmp_path):
    family, checkpoint, tokenizer, _ = written
    messages = chat_messages(SYSTEM, user_message(ROWS[0]))
    training = render_chat(FAMILIES[family].chat_template, messages)
    stop_id = chat_for(family, tokenizer).stop_id
    no_template, no_stop, other = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    write_gguf(checkpoint, no_template, "f16", chat_for(family, tokenizer, template=None))
    write_gguf(checkpoint, no_stop, "f16", chat_for(family, tokenizer, stop=False))
    # another family's template: the prompt renders, but not as training's
    stranger = "qwen3" if family == "llama32" else "llama32"
    write_gguf(checkpoint, other, "f16", chat_for(family, tokenizer, template=FAMILIES[stranger].chat_template))
    assert any("no tokenizer.chat_template" in line for line in problems(no_template, messages, training, stop_id))
    assert any("eos_token_id is None" in line for line in problems(no_stop, messages, training, stop_id))
    assert any("unlike training's" in line for line in problems(other, messages, training, stop_id))


def test_the_stage_writes_nothing_when_a_file_fails_its_check(tiny_checkpoints, repo_params, tmp_path, monkeypatch):
    from core import atomic
    from core.paths import read_table
    from stages import gguf as stage
    from tests.conftest import tiny_params

    paths = read_table().under(tmp_path)
    checkpoint = tiny_checkpoints["llama32"]
    params = tiny_params(repo_params, "llama32", checkpoint)
    merged = tmp_path / "models/merged"  # as the export saves it: the weights, our template, eos = end of turn
    merged.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (merged / name).symlink_to(checkpoint / name)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    family = FAMILIES["llama32"]
    tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token = (
        family.chat_template,
        family.end_of_turn,
        family.pad_token,
    )
    tokenizer.save_pretrained(merged)
    written = stage.write_gguf
    monkeypatch.setattr(
        stage,
        "write_gguf",
        lambda merged, path, precision, chat: written(
            merged,
            path,
            precision,
            chat.__class__(None, chat.system, chat.family, chat.stop_id, chat.pad_id, chat.bos_id),
        ),
    )
    outputs = atomic.Outputs()
    with pytest.raises(UserError, match="no tokenizer.chat_template"):
        stage.gguf_files(params, paths, outputs)
    outputs.discard()
    assert not (tmp_path / "models/gguf").exists()
    monkeypatch.setattr(stage, "write_gguf", written)
    outputs = atomic.Outputs()
    stage.gguf_files(params, paths, outputs)
    outputs.commit()
    names = sorted(p.name for p in (tmp_path / "models/gguf").iterdir())
    assert names == ["Modelfile", "model-f16.gguf", "model-q8_0.gguf"]
    modelfile = (tmp_path / "models/gguf/Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf\n") and 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert json.dumps(params.prompt.system)[1:-1] in modelfile or params.prompt.system in modelfile


def test_ask_without_llama_cpp_says_in_one_line_how_to_install_it():
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama.cpp's binding is installed here")
    done = subprocess.run(
        [sys.executable, "-m", "stages.ask", "--engine", "llamacpp", "A child of 4 with fever and cough."],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "pip install llama-cpp-python" in lines[0] and "Traceback" not in done.stderr


def test_llama_cpp_tokenizes_as_training_and_answers_as_pytorch(written):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed")
    family, checkpoint, tokenizer, files = written
    engine = llama_cpp.Llama(model_path=str(files["f16"]), n_ctx=1024, n_threads=2, verbose=False, logits_all=True)
    pytorch = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    agreement = []
    for row in ROWS:
        ids = prompt_ids(family, tokenizer, row)
        text = tokenizer.decode(ids[0])
        assert engine.tokenize(text.encode(), add_bos=False, special=True) == ids[0].tolist(), row["Master_Index"]
        answer = greedy(pytorch, ids)
        engine.reset()
        engine.eval(answer[0].tolist())
        found = torch.tensor(engine.scores[ids.shape[1] - 1 : answer.shape[1] - 1]).argmax(-1)
        expected = answer[0, ids.shape[1] :]
        agreement.append((expected == found).float().mean().item())
    assert sum(agreement) / len(agreement) >= Q8_0_AGREEMENT, agreement


def test_gguf_model_answers_with_pytorchs_greedy_tokens_and_stops_at_the_end_of_turn(written):
    """What `ask --engine llamacpp` runs: GgufModel's prompt (the file's own template, llama.cpp's tokenizer),
    its decoding loop and its stop, against PyTorch on the same prompt."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed")
    from core.config import GenerationConfig
    from core.export.llamacpp import GgufModel

    family, checkpoint, tokenizer, files = written
    model = GgufModel(files["f16"], threads=2, context=1024)
    pytorch = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    generation = GenerationConfig(
        max_new_tokens=NEW_TOKENS, batch_size=1, do_sample=False, temperature=1.0, top_p=1.0, repetition_penalty=1.0
    )
    agreement, streamed = [], []
    for row in ROWS:
        ids = prompt_ids(family, tokenizer, row)
        assert model.prompt_ids(row) == ids[0].tolist(), row["Master_Index"]  # training's prompt, token for token
        expected = greedy(pytorch, ids)[0, ids.shape[1] :].tolist()
        text, new = model.answer(row, generation, on_text=streamed.append)
        assert len(new) == NEW_TOKENS and text == "".join(streamed).strip(), row["Master_Index"]
        agreement.append(sum(a == b for a, b in zip(new, expected, strict=True)) / NEW_TOKENS)
        streamed.clear()
    assert sum(agreement) / len(agreement) >= Q8_0_AGREEMENT, agreement

    # the end of turn made the likeliest token: the answer ends there, and the text holds nothing of it
    read = model.last_logits
    model.last_logits = lambda: _stop_on_top(read(), model.stop_id)
    text, new = model.answer(ROWS[0], generation)
    assert new == [model.stop_id] and text == ""


def _stop_on_top(logits, stop_id: int):
    logits[stop_id] = logits.max() + 10
    return logits


@pytest.fixture(scope="module")
def wide_llama(tiny_checkpoints, tmp_path_factory):
    """(checkpoint, tokenizer, f16 GGUF path) of a Llama-architecture checkpoint whose head_dim is twice
    hidden / heads: llama.cpp takes a Llama head as hidden / heads unless the file says otherwise (it refused
    such a file: 'invalid n_rot')."""
    from transformers import AutoConfig

    source, folder = tiny_checkpoints["llama32"], tmp_path_factory.mktemp("gguf-wide")
    config = AutoConfig.from_pretrained(source)
    config.head_dim = 2 * config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "wide")
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(folder / "wide")
    write_gguf(folder / "wide", folder / "wide-f16.gguf", "f16", chat_for("llama32", tokenizer))
    return folder / "wide", tokenizer, folder / "wide-f16.gguf"


def test_a_llama_head_wider_than_hidden_over_heads_is_in_the_file(wide_llama):
    import gguf

    checkpoint, _, path = wide_llama
    head_dim = json.loads((checkpoint / "config.json").read_text())["head_dim"]
    assert gguf.GGUFReader(str(path)).fields["llama.attention.key_length"].contents() == head_dim


def test_llama_cpp_answers_as_pytorch_with_a_head_wider_than_hidden_over_heads(wide_llama):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed")
    checkpoint, tokenizer, path = wide_llama
    engine = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    pytorch = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = prompt_ids("llama32", tokenizer, ROWS[0])[:, :64]
    with torch.no_grad():
        expected = pytorch(ids).logits[0].argmax(-1)
    engine.eval(ids[0].tolist())
    found = torch.tensor(engine.scores[: ids.shape[1]]).argmax(-1)
    assert (found == expected).float().mean() >= Q8_0_AGREEMENT
