"""The conversation a row becomes, and the chat template's rendering of it, without torch.

Training and prediction render prompts through the tokenizer (BaseUnslothModel.prompt_for);
the exported model (core/export/runtime.py) runs where torch and transformers are not installed, so it
renders the same template here. Both give the same text: transformers renders chat templates
with Jinja's sandbox, trim_blocks and lstrip_blocks on, as `render_chat` does (a test compares
them for every family).
"""

from __future__ import annotations

import functools
import logging

from core.data import PROMPT

log = logging.getLogger(__name__)

# Row columns that tell the model which specialty is asked; the vignette itself does not say.
CONTEXT_COLUMNS = (("Clinical panel", "Clinical Panel"), ("Nursing competency", "Nursing Competency"))


def user_message(row: dict) -> str:
    """The user's turn for a row: the vignette, led by the context the row carries.

    The vignette already names the nurse's county, facility and experience; the panel and
    competency are not in it and tell the model which specialty is asked.
    """
    context = [f"{label}: {row[col]}" for label, col in CONTEXT_COLUMNS if row.get(col)]
    return "\n".join(context + ["", row[PROMPT].strip()]) if context else row[PROMPT].strip()


def cut_middle(ids: list[int], keep: int) -> list[int]:
    """`ids` cut to `keep` tokens by dropping their middle: a prompt's start (the system prompt, the
    nurse's background) and its end (the question, the assistant's header) stay. Training and
    answering cut an over-long prompt the same way."""
    if len(ids) <= keep:
        return ids
    head = keep // 2
    return ids[:head] + ids[len(ids) - (keep - head) :]


def shortest_prompt(max_length: int) -> int:
    """The fewest prompt tokens a cut may leave: a quarter of the window (cut further, a prompt no
    longer says what is asked). Training drops a row that would need less; answering keeps this many."""
    return max_length // 4


def fit_to_window(
    prompts: list[list[int]], prefixes: list[list[int]], answer_tokens: int, max_length: int, row_ids: list[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and answer prefixes cut so that each, with `answer_tokens` new tokens, fits in the
    window the model was tuned in (max_seq_length), with one warning naming the rows cut.

    A prompt loses its middle (cut_middle), as training cuts it, down to a quarter of the window at
    most (cut further it no longer says what is asked). An answer prefix that still does not fit
    (the echo of a very long vignette) is fed to the model by its end only, which the answer
    continues; the answer's text keeps the whole prefix."""
    room = max_length - answer_tokens
    fitted_prompts, fitted_prefixes, cut = [], [], []
    for row_id, prompt, prefix in zip(row_ids, prompts, prefixes, strict=True):
        kept = cut_middle(prompt, max(room - len(prefix), shortest_prompt(max_length)))
        kept_prefix = prefix[max(len(prefix) - max(room - len(kept), 0), 0) :]
        if len(kept) < len(prompt) or len(kept_prefix) < len(prefix):
            cut.append(row_id)
        fitted_prompts.append(kept)
        fitted_prefixes.append(kept_prefix)
    if cut:
        log.warning(
            "%d of %d prompts do not fit in max_seq_length=%d with their answer: the middle of each was cut, "
            "as training cuts it (%s)",
            len(cut),
            len(prompts),
            max_length,
            ", ".join(cut),
        )
    return fitted_prompts, fitted_prefixes


def tidy_answer(decoded: str) -> str:
    """A decoded answer without surrounding space and without U+FFFD: the decoder writes one for
    bytes that never made a whole character (a byte-level token left alone mid-answer, or a
    character cut at the length limit), text that no input held and the model never meant."""
    return decoded.replace("\ufffd", "").strip()


def join_answer(prefix: str, text: str) -> str:
    """An answer's full text: its prefix, then what the model wrote after it."""
    return f"{prefix} {text}".strip() if prefix else text


def chat_messages(system_prompt: str, user: str, response: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt)
