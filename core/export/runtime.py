"""The exported model at work: answering vignettes with ONNX Runtime GenAI on a CPU, without torch.

The export stage (core/export/build.py) writes a directory that holds the merged, quantized model,
the tokenizer and `edge.json`: what this module needs to build the same prompts as training
(the family's chat template, the system prompt, the end-of-turn token) and which adapter the
export was made from. Nothing here imports torch or transformers, so a device needs only
onnxruntime-genai, tokenizers and jinja2 (and this repository's core/).

Decoding follows `generation` from params.yaml with ONNX Runtime GenAI's own search; the
repetition rules are ours, on the answer's tokens only (core/decode/repetition.py), applied here to the
logits before each step (`answer_only_rules`, NumPy). Greedy decoding gives the tokens of the
PyTorch path for an unquantized export, rules included (tested). Beam search cannot take them:
ONNX Runtime GenAI 0.18 shows the logits of every beam but the tokens of none but the best, so
its beams search without the rules and the answer is cut where it first repeats a run of words
(core.metrics.loops.cut_at_first_loop), the substitute measured in docs/quality.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from core import atomic
from core.config import GenerationConfig
from core.data import ID, PROMPT, require_vignette
from core.decode.results import Generations, trim_at_stop
from core.errors import ArtifactError, how_to_restore
from core.metrics.loops import cut_at_first_loop
from core.prompts import (
    answer_prefix,
    chat_messages,
    fit_to_window,
    join_answer,
    render_chat,
    tidy_answer,
    user_message,
)
from core.resources import compute_threads

log = logging.getLogger(__name__)

EDGE_FILE = "edge.json"  # written by the export stage beside the ONNX model
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class StaleExport(ArtifactError):
    """The exported model is missing, or was made from another adapter than the current one."""


def adapter_digest(adapter_dir: str | Path) -> str:
    """A hash of an adapter's weights and configuration: which adapter an export was made from."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(adapter_dir) / name
        if not path.exists():
            raise ArtifactError(
                f"{adapter_dir}: no LoRA adapter here ({name} is missing); run the finetune stage first"
            )
        if (
            path.suffix == ".safetensors"
        ):  # a damaged adapter is not "another adapter": say which file and how to restore it
            atomic.check_safetensors(path, how_to_restore(adapter_dir))
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def og_context_length(directory: Path) -> int:
    return json.loads((directory / "genai_config.json").read_text(encoding="utf-8"))["model"]["context_length"]


def answer_only_rules(logits, answers: list[list[int]], penalty: float, ngram_size: int):
    """core/decode/repetition.py's rules in NumPy: `logits` [rows, vocab], each row's answer tokens so far.
    A token the answer holds is penalised (positive logit / penalty, negative x penalty); a token
    that would complete an n-gram the answer holds is forbidden."""
    import numpy as np

    logits = np.array(logits, dtype=np.float32, copy=True)
    for row, answer in enumerate(answers):
        if penalty != 1.0 and answer:
            seen = np.unique(np.asarray(answer))
            values = logits[row, seen]
            logits[row, seen] = np.where(values < 0, values * penalty, values / penalty)
        if ngram_size and len(answer) >= ngram_size:
            suffix = answer[len(answer) - ngram_size + 1 :] if ngram_size > 1 else []
            for j in range(len(answer) - ngram_size + 1):
                if answer[j : j + ngram_size - 1] == suffix:
                    logits[row, answer[j + ngram_size - 1]] = -np.inf
    return logits


def search_options(generation: GenerationConfig, prompt_tokens: int) -> dict:
    """ONNX Runtime GenAI's search options for `generation` (its lengths count the prompt too)."""
    options = dict(
        max_length=prompt_tokens + generation.longest_answer,
        min_length=prompt_tokens + generation.min_new_tokens,
        do_sample=generation.do_sample,
        num_beams=generation.num_beams,
        # its own rules would count the prompt's tokens: ours (answer_only_rules) replace them
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        length_penalty=generation.length_penalty,
        early_stopping=generation.early_stopping,
    )
    if generation.do_sample:
        # top_k 50 is transformers' default, which the PyTorch path keeps
        options.update(
            temperature=generation.temperature, top_p=generation.top_p, top_k=50, random_seed=generation.seed
        )
    return options


class ExportedModel:
    """The export stage's model directory, ready to answer one vignette at a time."""

    def __init__(self, directory: str | Path, adapter: str | Path | None = None) -> None:
        directory = Path(directory)
        rebuild = "build it with: dvc repro export"
        if not (directory / EDGE_FILE).exists():
            raise StaleExport(f"{directory}: no exported model here ({EDGE_FILE} is missing); {rebuild}")
        self.directory = directory
        self.info = json.loads((directory / EDGE_FILE).read_text(encoding="utf-8"))
        if adapter is not None and adapter_digest(adapter) != self.info["adapter_digest"]:
            raise StaleExport(
                f"{directory} is stale: it was exported from another adapter than the one in {adapter} now; re{rebuild}"
            )
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        self._og = og
        config = og.Config(str(directory))
        # ONNX Runtime's default thread count left half of a 2-core machine idle (70 against 100
        # tokens/s, docs/deploy.md): one thread per CPU this process may use, as torch does
        config.overlay(
            json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": compute_threads()}}}})
        )
        self.model = og.Model(config)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.stop_id = self.info["end_of_turn_id"]
        # the window the model was tuned in (an export made before edge.json recorded it: the model's own)
        self.max_seq_length = self.info.get("max_seq_length") or og_context_length(directory)

    # --- prompts: the text training used, rendered without transformers -----------------------
    def prompt_text(self, row: dict) -> str:
        messages = chat_messages(self.info["system_prompt"], user_message(row))
        return render_chat(self.info["chat_template"], messages)

    def prompt_ids(self, row: dict) -> list[int]:
        # the chat template writes every special token itself: the tokenizer adds none
        return self.tokenizer.encode(self.prompt_text(row), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return tidy_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

    # --- answering ---------------------------------------------------------------------------
    def answer(
        self, row: dict, generation: GenerationConfig, on_text: Callable[[str], None] | None = None
    ) -> tuple[str, list[int]]:
        """The answer to one row and its new token ids (end-of-turn token included where the
        model ended its turn). With greedy or sampled decoding `on_text` receives the answer's
        text piece by piece as it is generated; beam search knows its answer only at the end."""
        require_vignette(row.get(PROMPT))
        og = self._og
        # an answer's prefix is encoded apart from the prompt, as training encodes the answer
        prefix_text = answer_prefix(row, generation.answer_prefix)
        if generation.longest_answer == 0:  # the length chosen on validation: the prefix alone
            if on_text is not None:
                on_text(prefix_text)
            return prefix_text, []
        prefix = self.tokenizer.encode(prefix_text, add_special_tokens=False).ids if prefix_text else []
        (prompt,), (prefix,) = fit_to_window(
            [self.prompt_ids(row)],
            [prefix],
            generation.longest_answer,
            self.max_seq_length,
            [str(row.get(ID, "the vignette"))],
        )
        params = og.GeneratorParams(self.model)
        params.set_search_options(**search_options(generation, len(prompt) + len(prefix)))
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt + prefix)
        rules = generation.repetition_penalty != 1.0 or generation.no_repeat_ngram_size > 0
        beams = generation.num_beams > 1
        new: list[int] = []
        shown = ""  # of the model's own text, after the prefix
        if on_text is not None and prefix_text:
            on_text(prefix_text + " ")
        while not generator.is_done():
            if rules and not beams:
                logits = generator.get_logits()  # [1, 1, vocab]
                answer = [int(t) for t in generator.get_sequence(0)[len(prompt) :]]  # the prefix included
                shaped = answer_only_rules(
                    logits.reshape(1, -1), [answer], generation.repetition_penalty, generation.no_repeat_ngram_size
                )
                generator.set_logits(shaped.reshape(logits.shape))
            generator.generate_next_token()
            if generation.num_beams == 1:
                new.append(int(generator.get_next_tokens()[0]))
                if on_text is not None:
                    text = self.decode(new)
                    if text.startswith(shown) and len(text) > len(shown):
                        on_text(text[len(shown) :])
                        shown = text
        if beams:
            new = [int(t) for t in generator.get_sequence(0)[len(prompt) + len(prefix) :]]
        new, _ = trim_at_stop(new, self.stop_id)
        own = self.decode(new)
        if rules and beams:
            cut = cut_at_first_loop(own)
            if cut != own:  # the kept tokens: those whose text is the cut answer
                new = self.tokenizer.encode(cut, add_special_tokens=False).ids
                own = cut
        if on_text is not None and own != shown:
            on_text(own[len(shown) :] if own.startswith(shown) else "\n" + own)
        return join_answer(prefix_text, own), new

    def answer_rows(self, rows: list[dict], generation: GenerationConfig, progress: bool = True) -> Generations:
        """Answer `rows` one at a time (batch 1, as on a device), timing each."""
        texts, counts, stopped, seconds, ids = [], [], [], [], []
        start = time.perf_counter()
        for row in tqdm(rows, desc="answering", unit="row", disable=not progress):
            began = time.perf_counter()
            text, new = self.answer(row, generation)
            seconds.append(time.perf_counter() - began)
            texts.append(text)
            ids.append(new)
            counts.append(len(new))
            stopped.append(bool(new) and new[-1] == self.stop_id)
        return Generations(
            texts,
            counts,
            stopped,
            time.perf_counter() - start,
            batch_size=1,
            decoded_tokens=sum(counts) * generation.num_beams,
            row_seconds=seconds,
            token_ids=ids,
            prefixes=[answer_prefix(row, generation.answer_prefix) for row in rows],
        )
