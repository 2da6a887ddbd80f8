"""What an answer that loops is: a run of words that occurs twice, the way small models repeat
themselves; the share of looping answers in the validation report.
"""

from __future__ import annotations

from core.metrics.rouge import normalise

# An answer loops when a run of this many words (normalised) occurs in it twice. Clinicians
# rarely do that: 2% of the 240 real development answers repeat a 6-word run, 17% a 4-word one.
LOOP_WORDS = 6


def has_loop(text: str, words: int = LOOP_WORDS) -> bool:
    """Whether some run of `words` consecutive words occurs twice in the normalised text."""
    tokens = normalise(text).split()
    seen = set()
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i : i + words])
        if run in seen:
            return True
        seen.add(run)
    return False


def loop_share(texts: list[str]) -> float:
    """The share of texts that loop (has_loop)."""
    return sum(map(has_loop, texts)) / len(texts) if texts else 0.0
