"""llama.cpp on our GGUF files: does it read them as PyTorch does, and how fast does it answer?

    python -m benchmarks.gguf_llamacpp --tokenizer DIR --out results.json [--threads 2] [--gpu]

DIR holds a merged checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja:
the default profile's models/merged). Random-init models of two shapes are written here as GGUF with
core/export/gguf_file.py, with that tokenizer:

- correctness: a Llama-architecture model of SmolLM2-135M's shape and a Qwen3-architecture one whose head
  is wider than hidden / heads (as Qwen3-0.6B's), weights drawn wide (std 0.2) so that each position has a
  clear top token; llama.cpp (f16 file) and PyTorch (the same weights rounded to f16) see the same token ids
  and the share of positions whose top token agrees is reported (a wrong query/key layout or head width
  gives about none). Also: llama.cpp's tokens for training's prompt against the tokenizer's own.
- speed: the SmolLM2-135M shape (weights drawn as in training, std 0.02) at q8_0, answering prompts of the
  sample's validation vignettes through our chat template: greedy, a fixed number of new tokens (the end of
  turn is masked, so every answer has the same length), `--threads` CPU threads, or every layer on the GPU
  with `--gpu` (in place of the CPU). Per vignette: ms, prompt and generation tokens/s (memory: see the deploy report).
Speed figures need no trained weights; the agreement needs llama.cpp to read the file as written.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from tests.checkpoints import SMOLLM2_SHAPE

log = logging.getLogger("benchmarks.gguf_llamacpp")
SMOLLM2 = {key: value for key, value in SMOLLM2_SHAPE.items() if key not in ("initializer_range", "vocab_size")}
QWEN3_WIDE_HEAD = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=128,  # 4 x 128 = 512 > 256: the key_length the file must carry
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def build(kind: str, shape: dict, tokenizer_dir: Path, out: Path, std: float) -> Path:
    """A random-init checkpoint of `shape` with the tokenizer files of `tokenizer_dir`, as the export's merged dir."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    config = (LlamaConfig if kind == "llama" else Qwen3Config)(**shape, vocab_size=max(vocab, 49152))
    config.initializer_range = std
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def prompts(tokenizer_dir: Path, rows: int) -> list[str]:
    from core.data import read_vignettes
    from core.prompts import chat_messages, render_chat, user_message

    system = __import__("yaml").safe_load(Path("params.yaml").read_text())["prompt"]["system"]
    template = (tokenizer_dir / "chat_template.jinja").read_text()
    vignettes = read_vignettes("data/sample/train.csv", labelled=True)[:rows]
    return [render_chat(template, chat_messages(system, user_message(row))) for row in vignettes]


def expected_tokens(kind: str, shape: dict, tokenizer_dir: Path, work: Path, texts: list[str], system: str) -> dict:
    """In a process of its own (torch and llama.cpp's CUDA build in one process crashed): the checkpoint, its
    f16 GGUF file, each text's token ids and PyTorch's top token at each position (weights rounded to f16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.export.gguf_file import chat_from_merged, write_gguf

    family = "smollm2"  # both files carry SmolLM2's tokenizer (--tokenizer): the architecture is what differs
    merged = build(kind, shape, tokenizer_dir, work / f"{kind}-wide", std=0.2)
    path = work / f"{kind}-wide-f16.gguf"
    write_gguf(merged, path, "f16", chat_from_merged(merged, system, family))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    found = {"path": str(path), "ids": [], "top": []}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            found["top"].append(model(torch.tensor([ids])).logits[0].argmax(-1).tolist())
        found["ids"].append(ids)
    return found


def agreement(kind: str, expected: dict, texts: list[str], threads: int) -> dict:
    """Teacher-forced top-1 agreement, llama.cpp (the f16 file) against PyTorch on f16-rounded weights."""
    import llama_cpp

    engine = llama_cpp.Llama(model_path=expected["path"], n_ctx=2048, n_threads=threads, logits_all=True, verbose=False)
    shares, same_tokens = [], []
    for text, ids, top in zip(texts, expected["ids"], expected["top"], strict=True):
        same_tokens.append(engine.tokenize(text.encode(), add_bos=False, special=True) == ids)
        engine.reset()
        engine.eval(ids)
        found = np.asarray(engine.scores[: len(ids)]).argmax(-1)
        shares.append(float((found == np.asarray(top)).mean()))
    return {"architecture": kind, "positions_agreeing": statistics.fmean(shares), "tokenized_as_training": same_tokens}


def speed_files(tokenizer_dir: Path, work: Path, system: str) -> dict[str, str]:
    """In a process of its own: the SmolLM2-shaped checkpoint (training's init) as q8_0 and f16 files."""
    from core.export.gguf_file import chat_from_merged, write_gguf

    merged = build("llama", SMOLLM2, tokenizer_dir, work / "smollm2-shape", std=0.02)
    files = {}
    for precision in ("q8_0", "f16"):
        files[precision] = str(work / f"smollm2-shape-{precision}.gguf")
        write_gguf(merged, files[precision], precision, chat_from_merged(merged, system, "smollm2"))
    return files


def speed(gguf_path: Path, texts: list[str], new_tokens: int, threads: int, gpu: bool) -> dict:
    """Greedy answers of `new_tokens` tokens, one vignette at a time."""
    import llama_cpp

    from core.export.llamacpp import last_logits

    engine = llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=2048, n_threads=threads, n_gpu_layers=-1 if gpu else 0, verbose=False
    )
    stop = engine.token_eos()
    ms, prompt_rates, generation_rates, prompt_lengths = [], [], [], []
    for text in [texts[0], *texts]:  # the first answer warms up and is not counted
        ids = engine.tokenize(text.encode(), add_bos=False, special=True)
        engine.reset()
        began = time.perf_counter()
        engine.eval(ids)
        prompted = time.perf_counter()
        for _ in range(new_tokens):
            scores = last_logits(llama_cpp, engine)
            scores[stop] = -np.inf
            engine.eval([int(scores.argmax())])
        done = time.perf_counter()
        ms.append((done - began) * 1000)
        prompt_rates.append(len(ids) / (prompted - began))
        generation_rates.append(new_tokens / (done - prompted))
        prompt_lengths.append(len(ids))
    ms, prompt_rates, generation_rates, prompt_lengths = (
        x[1:] for x in (ms, prompt_rates, generation_rates, prompt_lengths)
    )
    return {
        "device": "gpu" if gpu else f"cpu, {threads} threads",
        "vignettes": len(ms),
        "new_tokens": new_tokens,
        "prompt_tokens_median": statistics.median(prompt_lengths),
        "ms_per_vignette_median": statistics.median(ms),
        "prompt_tokens_per_s_median": statistics.median(prompt_rates),
        "generation_tokens_per_s_median": statistics.median(generation_rates),
        "file_mb": gguf_path.stat().st_size / 2**20,
    }


def main() -> None:
    import multiprocessing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--work", default=Path("/tmp/gguf-bench"), type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--gpu", action="store_true", help="the speed with every layer on the GPU, not the CPU")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out: agreement, speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    texts = prompts(args.tokenizer, args.rows)
    system = __import__("yaml").safe_load(Path("params.yaml").read_text())["prompt"]["system"]
    results: dict = {"agreement": [], "speed": []}
    child = multiprocessing.get_context("spawn")  # torch stays out of this process
    if "agreement" not in args.skip:
        for kind, shape in (("llama", SMOLLM2), ("qwen3", QWEN3_WIDE_HEAD)):
            with child.Pool(1) as pool:
                expected = pool.apply(expected_tokens, (kind, shape, args.tokenizer, args.work, texts[:4], system))
            results["agreement"].append(agreement(kind, expected, texts[:4], args.threads))
            log.info("%s", results["agreement"][-1])
    if "speed" not in args.skip:
        with child.Pool(1) as pool:
            files = pool.apply(speed_files, (args.tokenizer, args.work, system))
        for precision, path in files.items():
            measured = speed(Path(path), texts, args.new_tokens, args.threads, args.gpu)
            results["speed"].append({"precision": precision, **measured})
            log.info("%s", results["speed"][-1])
            args.out.write_text(json.dumps(results, indent=2))  # what was measured survives a later crash
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
