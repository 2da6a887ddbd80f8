"""What decoding returns: the answers of a batch of rows and what it took to make them (both
engines: PyTorch in core/decode/generation.py, ONNX Runtime GenAI in core/export/runtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Generations:
    """Responses in the order of the rows asked for, with what it took to make them."""

    texts: list[str]
    new_tokens: list[int]  # tokens generated per response, end-of-turn token included
    stopped: list[bool]  # True where the model ended its turn; False where max_new_tokens cut it
    seconds: float
    batch_size: int = 0  # the most rows generated at once
    peak_gpu_memory_gb: float = 0.0  # while generating; 0 on a CPU
    decoded_tokens: int = 0  # token positions decoded over every sequence carried (beams, candidates, padding)
    row_seconds: list[float] = field(default_factory=list)  # per row, where rows are answered one at a time
    token_ids: list[list[int]] = field(
        default_factory=list
    )  # per row, the new tokens kept (end-of-turn token included)
    prefixes: list[str] = field(
        default_factory=list
    )  # per row, the text written for the model before its tokens (answer_prefix)

    @property
    def tokens_per_second(self) -> float:
        return sum(self.new_tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def decoding_work_ratio(self) -> float:
        """Decoded positions per token kept in an answer: about 1 for greedy decoding, about the
        number of beams or candidates for beam search and MBR (their extra cost)."""
        kept = sum(self.new_tokens)
        return self.decoded_tokens / kept if kept else 0.0


def trim_at_stop(ids: list[int], stop_id: int) -> tuple[list[int], bool]:
    """A generated sequence up to and including its end-of-turn token (anything after it dropped),
    and whether it had one."""
    if stop_id in ids:
        return ids[: ids.index(stop_id) + 1], True
    return ids, False
