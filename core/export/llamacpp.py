"""The GGUF file answering through llama.cpp (its Python binding, `llama_cpp`), one vignette at a time, as
`ask --engine llamacpp` and the deploy report use it.

The prompt is the file's own: its chat template (our system prompt inside) and llama.cpp's tokenizer, so
what is measured is what a llama.cpp or Ollama user runs. The answer prefix and the answer-only repetition
rules are ours, applied to llama.cpp's logits as the ONNX engine applies them; llama.cpp has no beam search
here, so beams fall back to greedy decoding (said once in the log).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.config import GenerationConfig
from core.errors import UserError
from core.export.gguf_read import metadata
from core.export.runtime import OneVignetteEngine, answer_only_rules
from core.prompts import render_chat, tidy_answer, user_message
from core.resources import compute_threads

log = logging.getLogger(__name__)

# llama-cpp-py-sync's prebuilt wheel installs another module (llama_cpp_py_sync) with another API: not this one
INSTALL = (
    "llama.cpp's Python binding is not installed: pip install llama-cpp-python (it builds llama.cpp: "
    "needs cmake and a C compiler, Debian's build-essential cmake; about 10 minutes on 2 cores)"
)


class LlamaCppMissing(UserError, ImportError):
    """llama.cpp's Python binding cannot be imported."""


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppMissing(INSTALL) from None
    return llama_cpp


def last_logits(llama_cpp, engine) -> np.ndarray:
    """A copy of the logits after the last token `engine` (a llama_cpp.Llama) evaluated. llama-cpp-python keeps
    them in `scores` only when every position's are kept (logits_all: a context-long table, 400 MB for
    SmolLM2's vocabulary at 2,048 tokens); otherwise `scores` stays zero, so they are read from the context."""
    pointer = llama_cpp.llama_get_logits_ith(engine.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(engine.n_vocab(),)).astype(np.float32)


class GgufModel(OneVignetteEngine):
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
        self.llama_cpp = llama_cpp
        self.engine = llama_cpp.Llama(
            model_path=str(path), n_ctx=context, n_threads=threads or compute_threads(), verbose=False
        )
        self._said_greedy = False

    def last_logits(self) -> np.ndarray:
        return last_logits(self.llama_cpp, self.engine)

    def prompt_ids(self, row: dict) -> list[int]:
        # the user's turn only: the file's template brings our system prompt
        text = render_chat(self.template, [{"role": "user", "content": user_message(row)}])
        return self.engine.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return tidy_answer(self.engine.detokenize(ids).decode("utf-8", errors="ignore"))

    def encode(self, text: str) -> list[int]:
        return self.engine.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def sequences_carried(self, generation: GenerationConfig) -> int:
        return 1  # greedy whatever num_beams says

    def new_tokens(
        self, prompt: list[int], prefix: list[int], generation: GenerationConfig, on_text
    ) -> tuple[list[int], str]:
        if generation.num_beams > 1 and not self._said_greedy:
            log.info("llama.cpp: greedy decoding (num_beams %d is the other engines')", generation.num_beams)
            self._said_greedy = True
        rng = np.random.default_rng(generation.seed)
        self.engine.reset()
        self.engine.eval(prompt + prefix)
        new: list[int] = []
        shown = ""
        while len(new) < generation.longest_answer:
            scores = self.last_logits()[None, :]
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
        return new, shown


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
