"""Greedy and beam-search decoding through a static KV cache, each step replayed as a CUDA graph:
the one place that decides whether this decoder answers (`chosen_for`), and the loop that runs it.

At the batch sizes predict uses, transformers' generate() spends most of a decode step in Python and
in kernel launches, the GPU mostly waiting (docs/benchmarks.md), its cache grows by concatenation,
copying itself every step, and beam search runs each prompt once per beam. Here the cache is
allocated once at its full length (transformers' StaticCache), each prompt runs once and all its
beams read it (core/decode/attention.py), the step's inputs and state live in fixed buffers
(core/decode/batch_state.py), and the whole step (embedding, every layer, the last position's logits,
the repetition rules, the choice of tokens and the copy of forked beams' cache rows) is captured once
as a CUDA graph and then replayed: one launch a token. Decoding ends when every prompt is done
(greedy: its stop token; beams: its finished answers can no longer change); once at most half of a
batch is still going, the finished prompts are dropped and the graph is captured again for the
smaller batch. On a CPU the same steps run eagerly.

The answers are generate()'s tokens: tests/test_model.py checks it on a CPU without graphs,
tests/test_gpu.py on a GPU with them. Sampling and minimum lengths stay with generate().
"""

from __future__ import annotations

import logging
import sys

import torch

from core.config import GenerationConfig
from core.decode.attention import decode_attention
from core.decode.batch_state import DecodeBatch
from core.decode.request import DecodeRequest

log = logging.getLogger(__name__)

EAGER_STEPS = 2  # decode steps run eagerly before a capture: lazy initialisations (cuBLAS handles, workspaces)
CHECK_EVERY = 8  # steps between looks at which rows have finished (each look waits for the GPU)
SHRINK_BELOW = 0.5  # drop finished rows once this share of the batch or less is still going
SMALLEST_BATCH = 8  # below this many rows a smaller graph saves too little to recapture
# beams: generated columns the attention reads, rounded up to a multiple of this (a graph each):
# not the whole answer's length from the first token on
GENERATED_BUCKET = 64


def chosen_for(generation: GenerationConfig, transformers_forward: bool) -> bool:
    """Whether this decoder answers: `generation.static_cache` is on and asks for what it does
    (greedy or beam search, no minimum length; the N best beams for MBR included; sampling is
    generate()'s), and the model runs transformers' own forward (`transformers_forward`: the hf
    backend). Unsloth replaces that forward, and once imported it patches the model classes of
    every model in the process (a CUDA graph cannot be captured through them: docs/benchmarks.md),
    so its presence rules this decoder out too."""
    g = generation
    wanted = g.static_cache and not g.do_sample and not g.min_new_tokens
    return wanted and transformers_forward and "unsloth" not in sys.modules


@torch.inference_mode()
def decode(model, request: DecodeRequest, graphs: bool | None = None) -> tuple[list[list[int]], int]:
    """Answers to the request's prompts (token ids, unpadded; each ends with its answer's prefix) in one
    batch, greedy or by beam search as its decoding says: num_return_sequences lists of new token ids a
    prompt, best first (each up to its stop token; after that, anything), and the number of steps run.
    `model`: the torch module. `graphs`: capture the decode step as a CUDA graph (default: on a CUDA device)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live in it
    device = next(inner.parameters()).device
    graphs = device.type == "cuda" if graphs is None else graphs
    batch = DecodeBatch(inner, request, device)
    with decode_attention(inner, beams=batch.beams > 1):
        return _run(batch, request.generation.mbr_candidates or 1, graphs, device)


def _run(batch: DecodeBatch, returned: int, graphs: bool, device: torch.device):
    n, max_new_tokens = len(batch.prompts), batch.max_new_tokens
    out = torch.full((n, returned, max_new_tokens), -1, dtype=torch.long, device=device)
    batch.prefill()
    runner, steps = _StepRunner(batch, graphs, device), 1
    for t in range(1, max_new_tokens):
        if t % CHECK_EVERY == 0:
            done = batch.done()
            going = (~done).nonzero().view(-1)
            if len(going) == 0:
                break
            if len(going) <= SHRINK_BELOW * len(batch.prompts) and len(batch.prompts) * batch.beams >= SMALLEST_BATCH:
                log.debug(
                    "step %d: %d of %d prompts still going; the batch shrinks to them",
                    t,
                    len(going),
                    len(batch.prompts),
                )
                ended = done.nonzero().view(-1)
                out[batch.prompts[ended]] = batch.answers(returned).index_select(0, ended)
                batch.keep(going)
                runner.batch_changed()
        # beams: the step writes generated column t-1 and reads columns 0 .. t-1 (a graph reads a
        # bucket's worth, so that it is captured once a bucket, not once a step)
        generated = 0
        if batch.beams > 1:
            generated = min(max_new_tokens, -(-t // GENERATED_BUCKET) * GENERATED_BUCKET) if graphs else t
        runner.step(generated)
        steps += 1
    out[batch.prompts] = batch.answers(returned)
    return [ids[:steps] for ids in out.view(n * returned, max_new_tokens).tolist()], steps


class _StepRunner:
    """Runs a batch's decode steps: eagerly without graphs (a CPU); with graphs, EAGER_STEPS eager
    warm-up steps on a side stream (as capture wants), then the step captured once as a CUDA graph
    and replayed. A graph holds the tensors and numbers it was captured with, so it is captured
    again when the batch's tensors change (`batch_changed`, after warm-up steps) or a step reads
    another number of generated columns."""

    def __init__(self, batch: DecodeBatch, graphs: bool, device: torch.device) -> None:
        self.batch, self.graphs, self.device = batch, graphs, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_with = -1  # the generated columns the graph reads
        self.eager_left = EAGER_STEPS if graphs else 0

    def batch_changed(self) -> None:
        self.graph, self.eager_left = None, EAGER_STEPS if self.graphs else 0

    def step(self, generated: int) -> None:
        if not self.graphs:
            self.batch.step(generated)
        elif self.eager_left > 0:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.batch.step(generated)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.eager_left -= 1
        else:
            if self.graph is None or generated != self.captured_with:
                self.graph, self.captured_with = torch.cuda.CUDAGraph(), generated
                with torch.cuda.graph(self.graph):
                    self.batch.step(generated)
            self.graph.replay()
