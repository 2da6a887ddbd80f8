"""The conversation a row becomes, and the chat template's rendering of it, without torch.

Training and prediction render prompts through the tokenizer (BaseUnslothModel.prompt_for);
the exported model (core/engine.py) runs where torch and transformers are not installed, so it
renders the same template here. Both give the same text: transformers renders chat templates
with Jinja's sandbox, trim_blocks and lstrip_blocks on, as `render_chat` does (a test compares
them for every family).
"""
from __future__ import annotations

import functools

from core.data import PROMPT, prompt_echo

# Row columns that tell the model which specialty is asked; the vignette itself does not say.
CONTEXT_COLUMNS = (("Clinical panel", "Clinical Panel"), ("Nursing competency", "Nursing Competency"))


def user_message(row: dict) -> str:
    """The user's turn for a row: the vignette, led by the context the row carries.

    The vignette already names the nurse's county, facility and experience; the panel and
    competency are not in it and tell the model which specialty is asked.
    """
    context = [f"{label}: {row[col]}" for label, col in CONTEXT_COLUMNS if row.get(col)]
    return "\n".join(context + ["", row[PROMPT].strip()]) if context else row[PROMPT].strip()


# What an answer begins with under `generation.answer_prefix: echo`: the way clinicians open
# (most real answers start with "summary" and restate the case), in the case's own words.
SUMMARY_OPENING = "summary"


def answer_prefix(row: dict, kind: str) -> str:
    """The text every answer to `row` starts with, written for the model before it writes the
    rest: nothing (`none`), or "summary" and the prompt echo (`echo`: the vignette without the
    nurse's introduction, normalised as the host scores it, which is how clinicians restate the case)."""
    return f"{SUMMARY_OPENING} {prompt_echo(row)}" if kind == "echo" else ""


def tidy_answer(decoded: str) -> str:
    """A decoded answer without the edges a cut leaves: surrounding space, and a U+FFFD where the
    cut split a character's bytes (it was never written whole)."""
    return decoded.strip().rstrip("\ufffd").strip()


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
