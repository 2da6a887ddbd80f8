"""The GGUF file answering through llama.cpp (its Python binding, `llama_cpp`), one vignette at a time, as
`ask --engine llamacpp` and the deploy report use it.

The prompt is the file's own: its chat template (our system prompt inside) and llama.cpp's tokenizer, so
what is measured is what a llama.cpp or Ollama user runs. The answer prefix and the answer-only repetition
rules are ours, applied to llama.cpp's logits as the ONNX engine applies them; llama.cpp has no beam search
here, so beams fall back to greedy decoding (said once in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.config import GenerationConfig
from core.data import ID, PROMPT, require_vignette
from core.decode.results import Generations, trim_at_stop
from core.errors import UserError
from core.export.gguf_read import metadata
from core.export.runtime import answer_one_at_a_time, answer_only_rules
from core.metrics.echo import answer_prefix, readable_prefix
from core.prompts import fit_to_window, join_answer, render_chat, tidy_answer, user_message
from core.resources import compute_threads

log = logging.getLogger(__name__)

INSTALL = (
    "llama.cpp's Python binding is not installed: pip install llama-cpp-python (builds llama.cpp: needs cmake "
    "and a C compiler, Debian's build-essential cmake), or on glibc 2.38 or later pip install llama-cpp-py-sync"
)


class LlamaCppMissing(UserError, ImportError):
    """llama.cpp's Python binding cannot be imported."""


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppMissing(INSTALL) from None
    return llama_cpp


class GgufModel:
    """A GGUF file of the gguf stage, ready to answer one vignette at a time on `threads` CPU threads."""

    def __init__(self, path: str | Path, threads: int | None = None, context: int = 2048) -> None:
        llama_cpp = import_llama_cpp()  # first: without the binding nothing else matters
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no GGUF file here; build it with: dvc repro gguf")
        found = metadata(path)
        if not found["chat_template"] or found["eot"] is None:
            raise UserError(f"{path}: no chat template or end-of-turn token in the file; rebuild it: dvc repro gguf")
        self.path, self.template, self.stop_id, self.max_seq_length = (
            path,
            found["chat_template"],
            found["eot"],
            context,
        )
        llama_cpp = import_llama_cpp()
        self.engine = llama_cpp.Llama(
            model_path=str(path), n_ctx=context, n_threads=threads or compute_threads(), verbose=False
        )
        self._said_greedy = False

    def prompt_ids(self, row: dict) -> list[int]:
        # the user's turn only: the file's template brings our system prompt
        text = render_chat(self.template, [{"role": "user", "content": user_message(row)}])
        return self.engine.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return tidy_answer(self.engine.detokenize(ids).decode("utf-8", errors="ignore"))

    def answer(
        self, row: dict, generation: GenerationConfig, on_text: Callable[[str], None] | None = None
    ) -> tuple[str, list[int]]:
        """One row's answer and its new token ids, as ExportedModel.answer gives them."""
        require_vignette(row.get(PROMPT))
        prefix_text = answer_prefix(row, generation.answer_prefix)
        shown_prefix = readable_prefix(row, generation.answer_prefix)
        if generation.longest_answer == 0:
            if on_text is not None:
                on_text(shown_prefix)
            return prefix_text, []
        prefix = self.engine.tokenize(prefix_text.encode("utf-8"), add_bos=False, special=False) if prefix_text else []
        (prompt,), (prefix,) = fit_to_window(
            [self.prompt_ids(row)], [prefix], generation.longest_answer, self.max_seq_length, [str(row.get(ID, "?"))]
        )
        if on_text is not None and shown_prefix:
            on_text(shown_prefix + " ")
        new = self._search(prompt, prefix, generation, on_text)
        new, _ = trim_at_stop(new, self.stop_id)
        return join_answer(prefix_text, self.decode(new)), new

    def _search(self, prompt: list[int], prefix: list[int], generation: GenerationConfig, on_text) -> list[int]:
        if generation.num_beams > 1 and not self._said_greedy:
            log.info("llama.cpp: greedy decoding (num_beams %d is the other engines')", generation.num_beams)
            self._said_greedy = True
        rng = np.random.default_rng(generation.seed)
        self.engine.reset()
        self.engine.eval(prompt + prefix)
        new: list[int] = []
        shown = ""
        while len(new) < generation.longest_answer:
            scores = np.array(self.engine.scores[self.engine.n_tokens - 1], dtype=np.float32)[None, :]
            if generation.repetition_penalty != 1.0 or generation.no_repeat_ngram_size:
                scores = answer_only_rules(
                    scores, [prefix + new], generation.repetition_penalty, generation.no_repeat_ngram_size
                )
            if len(new) < generation.min_new_tokens:
                scores[0, self.stop_id] = -np.inf
            token = _pick(scores[0], generation, rng)
            new.append(token)
            if token == self.stop_id:
                break
            self.engine.eval([token])
            if on_text is not None:
                text = self.decode(new)
                if text.startswith(shown) and len(text) > len(shown):
                    on_text(text[len(shown) :])
                    shown = text
        return new

    def answer_rows(self, rows: list[dict], generation: GenerationConfig, progress: bool = True) -> Generations:
        """Answer `rows` one at a time (batch 1, as on a device), timing each."""
        return answer_one_at_a_time(self, rows, generation, progress)


def _pick(scores: np.ndarray, generation: GenerationConfig, rng: np.random.Generator) -> int:
    """Greedy, or a sample at the profile's temperature and top-p."""
    if not generation.do_sample:
        return int(np.argmax(scores))
    logits = scores.astype(np.float64) / max(generation.temperature, 1e-6)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), generation.top_p)) + 1]
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))
