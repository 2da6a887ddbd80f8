"""What one call to the decoder is asked for, derived once and handed whole from `generate_responses`
down to the step loop: each row's prompt and answer prefix, the decoding, and the tokens that stop and
pad an answer. A batch is a `subset` of it; the longest answer and the prefix lengths are read from it,
never passed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.config import GenerationConfig


@dataclass(frozen=True)
class DecodeRequest:
    prompts: list[list[int]]  # each row's prompt tokens, unpadded, ending with its answer prefix's tokens
    prefixes: list[tuple[str, list[int]]]  # each row's answer prefix: its text and its tokens
    generation: GenerationConfig
    stop_id: int  # the end-of-turn token: an answer ends there
    pad_id: int

    @property
    def longest_answer(self) -> int:
        """New tokens a row may get: the decoding's max_new_tokens or its grid's longest length."""
        return self.generation.longest_answer

    @property
    def prefix_lengths(self) -> list[int]:
        return [len(ids) for _, ids in self.prefixes]

    @property
    def longest_prompt(self) -> int:
        return max((len(ids) for ids in self.prompts), default=0)

    def subset(self, index: list[int]) -> DecodeRequest:
        """The rows at `index`, in that order (a batch)."""
        return replace(self, prompts=[self.prompts[i] for i in index], prefixes=[self.prefixes[i] for i in index])


def plain_request(
    prompts: list[list[int]], generation: GenerationConfig, stop_id: int, pad_id: int = 0
) -> DecodeRequest:
    """A request of prompts without answer prefixes."""
    return DecodeRequest(prompts, [("", [])] * len(prompts), generation, stop_id, pad_id)
