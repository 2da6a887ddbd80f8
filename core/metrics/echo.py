"""The prompt-echo baseline: the vignette itself, in the host's normalisation, scored as an answer;
the answer prefix built from it (`answer_prefix`), and that prefix as a person reads it
(`readable_answer`: the case's own words and numbers, never "398" for 39.8).

Clinicians restate the case before they answer it, so the vignette alone scores well (docs/quality.md):
every score of the project stands beside it, and `answer_prefix: echo` opens answers with it.
"""

from __future__ import annotations

import re

from core.data import PROMPT
from core.metrics.rouge import normalise
from core.prompts import join_answer

# "I am a nurse with 12 years of experience in General nursing working in a Health Centres in
# Kiambu county in Kenya." and the shorter "I am a nurse working in a ... in Kenya."
_NURSE_INTRO = re.compile(r"^\s*i\s+am\s+a\s+(?:registered\s+)?nurse\b.{0,300}?\bkenya\b\s*[.,:;]?\s*", re.I | re.S)


def strip_nurse_intro(prompt: str) -> str:
    """The vignette without the nurse's self-introduction (unchanged if it has none)."""
    rest = _NURSE_INTRO.sub("", prompt, count=1)
    return rest if rest.strip() else prompt


def prompt_echo(row: dict) -> str:
    """The prompt-echo baseline: the vignette itself, nurse introduction removed, normalised."""
    return normalise(strip_nurse_intro(row[PROMPT]))


# What an answer begins with under `generation.answer_prefix: echo`: the way clinicians open
# (most real answers start with "summary" and restate the case), in the case's own words.
SUMMARY_OPENING = "summary"


def answer_prefix(row: dict, kind: str) -> str:
    """The text every answer to `row` starts with, written for the model before it writes the
    rest: nothing (`none`), or "summary" and the prompt echo (`echo`: the vignette without the
    nurse's introduction, normalised as the host scores it, which is how clinicians restate the case)."""
    return f"{SUMMARY_OPENING} {prompt_echo(row)}" if kind == "echo" else ""


def readable_prefix(row: dict, kind: str) -> str:
    """The answer prefix as a person reads it: "Summary:" and the case in the vignette's own words,
    numbers, units and punctuation. The host's normalisation (39.8 -> 398, 5.2 g/dl -> 52 gdl) is for
    the submission file and the scores only."""
    return f"Summary: {strip_nurse_intro(row[PROMPT]).strip()}" if kind == "echo" else ""


def readable_answer(row: dict, text: str, kind: str) -> str:
    """An answer to `row` for a person: the normalised answer prefix it starts with (if it does) shown
    as `readable_prefix`, and the model's own text after it as the model wrote it."""
    prefix = answer_prefix(row, kind)
    if not prefix or not text.startswith(prefix):
        return text
    return join_answer(readable_prefix(row, kind), text[len(prefix) :].strip())
