"""The prompt-echo baseline: the vignette itself, in the host's normalisation, scored as an answer.

Clinicians restate the case before they answer it, so the vignette alone scores well (docs/quality.md):
every score of the project stands beside it, and `answer_prefix: echo` opens answers with it.
"""

from __future__ import annotations

import re

from core.data import PROMPT
from core.metrics.rouge import normalise

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
