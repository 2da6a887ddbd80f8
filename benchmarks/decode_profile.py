"""Where a decode step of core/decode/static_cache.py spends its time on a GPU: one step replayed as a CUDA
graph, beside the same step without the beams' cache reorder and without the repetition rules,
and greedy; plus a torch.profiler table of the eager step's kernels.

    python -m benchmarks.decode_profile                       # qwen3 shape, bf16, 200 prompts x 4 beams
    python -m benchmarks.decode_profile --prompts 100 --prompt-tokens 500

Random-init weights of the real shape (tests/checkpoints.py) and random prompt tokens: speed does
not depend on them. The decoding settings are the profile's (params.yaml), at 256 new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import time

log = logging.getLogger("benchmarks.decode_profile")


def replayed_step(batch, generated: int, table: bool) -> tuple[float, float]:
    """(prefill seconds, milliseconds a step) of a batch: the prefill timed once, then one step
    (beams: reading `generated` generated columns) captured as a CUDA graph and replayed 20 times;
    with `table`, the profiler's kernel table of three eager steps first."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    batch.prefill()
    torch.cuda.synchronize()
    prefill = time.perf_counter() - start
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as capture wants
        batch.step(generated)
        batch.step(generated)
    torch.cuda.current_stream().wait_stream(side)
    if table:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                batch.step(generated)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        batch.step(generated)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    return prefill, (time.perf_counter() - start) / 20 * 1000


def step_ms(
    model,
    prompts,
    prefix_tokens: int,
    generation,
    stop_id: int,
    pad_id: int,
    max_new_tokens: int,
    without_reorder: bool = False,
    table: bool = False,
) -> tuple[float, float, float]:
    """(prefill seconds, milliseconds a graph-replayed step, peak GiB) for one batch."""
    import torch

    from core.decode.attention import decode_attention
    from core.decode.batch_state import DecodeBatch
    from core.decode.request import DecodeRequest

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    copies = DecodeBatch._copy_forks
    if without_reorder:  # the answers' and seen tokens' copies stay: only the cache's are left out

        def answers_only(batch, source):
            batch.answer.copy_(batch.answer.index_select(0, source))
            if batch.seen is not None:
                batch.seen.copy_(batch.seen.index_select(0, source))

        DecodeBatch._copy_forks = answers_only
    try:
        with torch.inference_mode():
            request = DecodeRequest(
                prompts,
                [("", prompt[len(prompt) - prefix_tokens :]) for prompt in prompts],
                dataclasses.replace(generation, max_new_tokens=max_new_tokens, length_grid=[]),
                stop_id,
                pad_id,
            )
            batch = DecodeBatch(model, request, torch.device("cuda"))
        # beams: a step halfway through the answer (graphs are captured per GENERATED_BUCKET)
        generated = max_new_tokens // 2 if batch.beams > 1 else 0
        with torch.inference_mode(), decode_attention(model, beams=batch.beams > 1):
            return (*replayed_step(batch, generated, table), torch.cuda.max_memory_allocated() / 2**30)
    finally:
        DecodeBatch._copy_forks = copies


@contextlib.contextmanager
def phase_clock():
    """Seconds spent in the decoder's one-off phases while the block runs: the prefill, the eager
    steps (warm-up before a capture; the first one compiles the Triton kernel) and the graph
    captures, each between two synchronisations (never inside a capture)."""
    import collections

    import torch

    clock = argparse.Namespace(seconds=collections.defaultdict(float), counts=collections.Counter())

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            if torch.cuda.is_current_stream_capturing():
                return fn(*args, **kwargs)
            torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                clock.seconds[name] += time.perf_counter() - start
                clock.counts[name] += 1

        return wrapper

    from core.decode.batch_state import DecodeBatch

    batch, graph = DecodeBatch, torch.cuda.graph
    saved = batch.prefill, batch.step, graph.__enter__, graph.__exit__
    started = {}

    def enter(self):
        torch.cuda.synchronize()
        started[id(self)] = time.perf_counter()
        return saved[2](self)

    def leave(self, *exc):
        result = saved[3](self, *exc)
        torch.cuda.synchronize()
        clock.seconds["captures"] += time.perf_counter() - started.pop(id(self))
        clock.counts["captures"] += 1
        return result

    batch.prefill, batch.step = timed("prefill", saved[0]), timed("eager steps", saved[1])
    graph.__enter__, graph.__exit__ = enter, leave
    try:
        yield clock
    finally:
        batch.prefill, batch.step, graph.__enter__, graph.__exit__ = saved


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3", choices=["qwen3", "llama32", "smollm2"])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument(
        "--prompt-tokens", type=int, default=350, help="the longest prompt (they range 40 tokens below it)"
    )
    parser.add_argument("--prefix-tokens", type=int, default=140, help="of each prompt, the answer's prefix (the echo)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--bucket",
        type=int,
        help="generated columns a graph reads, rounded up to this "
        "(static_cache.GENERATED_BUCKET; a graph is captured for each): to try another value",
    )
    parser.add_argument("--calls-only", action="store_true", help="only the two whole decodings, not the step table")
    return parser.parse_args()


def model_and_prompts(args):
    """The shape's profile decoding (through the stages' own loader), a full-size random-weight model
    of the shape on the GPU, and random prompts of up to --prompt-tokens tokens."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.settings import change_profile, checked, read_params
    from tests.checkpoints import build_checkpoint

    generation = dataclasses.replace(
        checked(change_profile(read_params(), args.shape)).profile.generation,
        length_grid=[],
        max_new_tokens=args.max_new_tokens,
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(args.shape, f"{tmp}/{args.shape}", size="full")
        model = (
            AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa")
            .cuda()
            .eval()
        )
    noise = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [
        torch.randint(100, vocab - 100, (args.prompt_tokens - i % 40,), generator=noise).tolist()
        for i in range(args.prompts)
    ]
    return generation, model, prompts


def whole_calls(args, model, prompts, generation, stop: int, pad: int) -> None:
    """The whole decoding as predict runs it, twice in this process: the first call pays one-off
    costs (kernel compilation, the first large allocations, lazy initialisations)."""
    import torch

    from core.decode import static_cache
    from core.decode.request import DecodeRequest

    if args.bucket:
        static_cache.GENERATED_BUCKET = args.bucket
    print(f"graphs read the generated columns in steps of {static_cache.GENERATED_BUCKET}")
    for call in ("first call", "second call"):
        with phase_clock() as phases:
            torch.cuda.synchronize()
            start = time.perf_counter()
            request = DecodeRequest(
                prompts,
                [("", prompt[len(prompt) - args.prefix_tokens :]) for prompt in prompts],
                dataclasses.replace(generation, max_new_tokens=args.max_new_tokens, length_grid=[]),
                stop,
                pad,
            )
            _, steps = static_cache.decode(model, request)
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        parts = ", ".join(
            f"{name} {seconds:.2f} s ({phases.counts[name]}x)" for name, seconds in phases.seconds.items()
        )
        print(
            f"decode, {call}: {total:.2f} s for {steps} steps: {parts}, the rest (replays, checks) "
            f"{total - sum(phases.seconds.values()):.2f} s",
            flush=True,
        )


def main() -> None:
    args = arguments()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generation, model, prompts = model_and_prompts(args)
    vocab = model.config.vocab_size
    stop, pad = vocab - 1, vocab - 2  # never chosen by random weights in practice: every step runs
    variants = [
        ("the profile's decoding", generation, False),
        ("without the cache copies", generation, True),
        (
            "without the repetition rules",
            dataclasses.replace(generation, repetition_penalty=1.0, no_repeat_ngram_size=0),
            False,
        ),
        ("greedy, the same rules", dataclasses.replace(generation, num_beams=1, mbr_candidates=0), False),
    ]
    print(
        f"{args.shape} shape, bf16, {args.prompts} prompts of up to "
        f"{args.prompt_tokens} tokens, {args.max_new_tokens} new tokens"
    )
    print("| variant | prefill s | ms a step | x steps (s) | peak GiB |\n|---|---|---|---|---|")
    whole_calls(args, model, prompts, generation, stop, pad)
    if args.calls_only:
        return
    for i, (name, decoding_, without_reorder) in enumerate(variants):
        prefill, ms, peak = step_ms(
            model,
            prompts,
            args.prefix_tokens,
            decoding_,
            stop,
            pad,
            args.max_new_tokens,
            without_reorder=without_reorder,
            table=i == 0,
        )
        print(
            f"| {name} | {prefill:.2f} | {ms:.1f} | {ms * (args.max_new_tokens - 1) / 1000:.1f} | {peak:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
