"""The exported model at work: answering vignettes with ONNX Runtime GenAI on a CPU, without torch.

The export stage (core/export/build.py) writes a directory that holds the merged, quantized model,
the tokenizer and `edge.json`: what this module needs to build the same prompts as training
(the family's chat template, the system prompt, the end-of-turn token) and which adapter the
export was made from. Nothing here imports torch or transformers, so a device needs only
onnxruntime-genai, tokenizers and jinja2 (and this repository's core/).

Decoding follows `generation` from params.yaml. Greedy and sampled decoding use ONNX Runtime
GenAI's own search, with our repetition rules on the answer's tokens only (core/decode/repetition.py)
applied to the logits before each step (`answer_only_rules`, NumPy). Beam search runs in
core/export/beams.py on the same model file through onnxruntime: ONNX Runtime GenAI's beams rank
answers by a length that counts the prompt, and ended after about a token where PyTorch's wrote
twenty. Both give the tokens of the PyTorch path for an unquantized export, rules included (tested).
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
from core.errors import ArtifactError
from core.export.beams import BeamChoice, beam_search
from core.lock_record import files_unlike_record, how_to_restore
from core.metrics.echo import answer_prefix, readable_prefix
from core.prompts import (
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


def genai_config(directory: Path) -> dict:
    return json.loads((directory / "genai_config.json").read_text(encoding="utf-8"))


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


class OneVignetteEngine:
    """What both export engines share: one row's answer built around the engine's own search. A subclass
    gives `stop_id`, `max_seq_length`, `prompt_ids(row)`, `encode(text)`, `decode(ids)` and
    `new_tokens(prompt, prefix, generation, on_text)` (the new token ids and the text it streamed)."""

    def answer(
        self, row: dict, generation: GenerationConfig, on_text: Callable[[str], None] | None = None
    ) -> tuple[str, list[int]]:
        """The answer to one row and its new token ids (end-of-turn token included where the
        model ended its turn). With greedy or sampled decoding `on_text` receives the answer's
        text piece by piece as it is generated; beam search knows its answer only at the end."""
        require_vignette(row.get(PROMPT))
        # an answer's prefix is encoded apart from the prompt, as training encodes the answer
        prefix_text = answer_prefix(row, generation.answer_prefix)
        # what a person watching sees: the case in its own words, not in the scoring normalisation
        shown_prefix = readable_prefix(row, generation.answer_prefix)
        if generation.longest_answer == 0:  # the length chosen on validation: the prefix alone
            if on_text is not None:
                on_text(shown_prefix)
            return prefix_text, []
        (prompt,), (prefix,) = fit_to_window(
            [self.prompt_ids(row)],
            [self.encode(prefix_text) if prefix_text else []],
            generation.longest_answer,
            self.max_seq_length,
            [str(row.get(ID, "the vignette"))],
        )
        if on_text is not None and shown_prefix:
            on_text(shown_prefix + " ")
        new, shown = self.new_tokens(prompt, prefix, generation, on_text)
        new, _ = trim_at_stop(new, self.stop_id)
        own = self.decode(new)
        if on_text is not None and own != shown:
            on_text(own[len(shown) :] if own.startswith(shown) else "\n" + own)
        return join_answer(prefix_text, own), new

    def sequences_carried(self, generation: GenerationConfig) -> int:
        """How many sequences the search decodes for one answer (its beams)."""
        return generation.num_beams

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
            decoded_tokens=sum(counts) * self.sequences_carried(generation),
            row_seconds=seconds,
            token_ids=ids,
            prefixes=[answer_prefix(row, generation.answer_prefix) for row in rows],
        )


class ExportedModel(OneVignetteEngine):
    """The export stage's model directory, ready to answer one vignette at a time."""

    def __init__(self, directory: str | Path, adapter: str | Path | None = None) -> None:
        directory = Path(directory)
        rebuild = "build it with: dvc repro export"
        if not (directory / EDGE_FILE).exists():
            raise StaleExport(f"{directory}: no exported model here ({EDGE_FILE} is missing); {rebuild}")
        self.directory = directory
        self.info = json.loads((directory / EDGE_FILE).read_text(encoding="utf-8"))
        if adapter is not None and adapter_digest(adapter) != self.info["adapter_digest"]:
            changed = files_unlike_record(adapter)
            if changed:  # not a newer adapter: this one's bytes are not the pipeline's
                raise ArtifactError(
                    f"{', '.join(changed)}: not what dvc.lock records (changed since the pipeline wrote it); "
                    + how_to_restore(adapter)
                )
            raise StaleExport(
                f"{directory} is stale: it was exported from another adapter than the one in {adapter} now; re{rebuild}"
            )
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.stop_id = self.info["end_of_turn_id"]
        self.config = genai_config(directory)
        # the window the model was tuned in (an export made before edge.json recorded it: the model's own)
        self.max_seq_length = self.info.get("max_seq_length") or self.config["model"]["context_length"]
        self._genai_model = self._session = None  # loaded on first use: a run needs one of the two

    @property
    def genai_model(self):
        """ONNX Runtime GenAI's model (greedy and sampled decoding)."""
        if self._genai_model is None:
            import onnxruntime_genai as og

            config = og.Config(str(self.directory))
            # ONNX Runtime's default thread count left half of a 2-core machine idle (70 against 100
            # tokens/s, docs/deploy.md): one thread per CPU this process may use, as torch does
            config.overlay(
                json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": compute_threads()}}}})
            )
            self._genai_model = og.Model(config)
        return self._genai_model

    @property
    def session(self):
        """The same model file as an onnxruntime session (beam search, core/export/beams.py)."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = compute_threads()
            decoder = self.config["model"]["decoder"]
            self._session = ort.InferenceSession(
                str(self.directory / decoder["filename"]), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    # --- prompts: the text training used, rendered without transformers -----------------------
    def prompt_text(self, row: dict) -> str:
        messages = chat_messages(self.info["system_prompt"], user_message(row))
        return render_chat(self.info["chat_template"], messages)

    def prompt_ids(self, row: dict) -> list[int]:
        # the chat template writes every special token itself: the tokenizer adds none
        return self.tokenizer.encode(self.prompt_text(row), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return tidy_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    # --- answering ---------------------------------------------------------------------------
    def new_tokens(
        self, prompt: list[int], prefix: list[int], generation: GenerationConfig, on_text
    ) -> tuple[list[int], str]:
        if generation.num_beams > 1 and not generation.do_sample:
            return self._beams(prompt, prefix, generation), ""
        return self._search(prompt, prefix, generation, on_text)

    def _rules(self, generation: GenerationConfig):
        """The answer-only repetition rules as a function of (scores, answers), or None when off."""
        if generation.repetition_penalty == 1.0 and generation.no_repeat_ngram_size == 0:
            return None
        return lambda scores, answers: answer_only_rules(
            scores, answers, generation.repetition_penalty, generation.no_repeat_ngram_size
        )

    def _beams(self, prompt: list[int], prefix: list[int], generation: GenerationConfig) -> list[int]:
        """Beam search (core/export/beams.py): the best answer's new tokens. The rules see the prefix
        as part of the answer, as on the PyTorch path."""
        rules = self._rules(generation)
        choice = BeamChoice(
            generation.num_beams,
            generation.longest_answer,
            self.stop_id,
            generation.length_penalty,
            generation.early_stopping,
        )
        return beam_search(
            self.session,
            prompt + prefix,
            choice,
            (lambda scores, answers: rules(scores, [prefix + a for a in answers])) if rules else (lambda s, _: s),
            self.config["model"]["decoder"]["head_size"],
            generation.min_new_tokens,
        )

    def _search(
        self, prompt: list[int], prefix: list[int], generation: GenerationConfig, on_text
    ) -> tuple[list[int], str]:
        """Greedy or sampled decoding with ONNX Runtime GenAI: the new tokens and the text shown so far."""
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.genai_model)
        params.set_search_options(**search_options(generation, len(prompt) + len(prefix)))
        generator = og.Generator(self.genai_model, params)
        generator.append_tokens(prompt + prefix)
        rules = self._rules(generation)
        new: list[int] = []
        shown = ""  # of the model's own text, after the prefix
        while not generator.is_done():
            if rules is not None:
                logits = generator.get_logits()  # [1, 1, vocab]
                answer = [int(t) for t in generator.get_sequence(0)[len(prompt) :]]  # the prefix included
                generator.set_logits(rules(logits.reshape(1, -1), [answer]).reshape(logits.shape))
            generator.generate_next_token()
            new.append(int(generator.get_next_tokens()[0]))
            if on_text is not None:
                text = self.decode(new)
                if text.startswith(shown) and len(text) > len(shown):
                    on_text(text[len(shown) :])
                    shown = text
        return new, shown
