"""Sweep training and decoding settings of one profile and score each on the validation split.

The pipeline's own code runs each variant: the configured data split as `prepare` makes it,
`fine_tune` as `finetune` calls it, `generate_responses` and `validation_report` as `predict`
and `evaluate` call them. What differs from `dvc exp run --queue -S ...` over the same settings
is only that each trained adapter is kept in memory and decoded with every decoding variant,
instead of one experiment per pair, so a grid of T trainings x D decodings costs T trainings.
The DVC command that reproduces any row is printed beside it.

    python -m benchmarks.sweep --out sweep.jsonl                          # the default grid
    python -m benchmarks.sweep --seeds 42,1,2 --per-epoch --out sweep.jsonl   # on three splits; every epoch scored
    python -m benchmarks.sweep --train e4:epochs=4 --decode b4:num_beams=4,repetition_penalty=1.2
    python -m benchmarks.sweep --workers 4 --out sweep.jsonl              # trainings in parallel (GPU)
    python -m benchmarks.sweep --table sweep.jsonl                        # the Markdown table
    python -m benchmarks.sweep --train e4:epochs=4 --align none:method=none \
        --align dpo:method=dpo,beta=0.1,learning_rate=5e-5                 # SFT against SFT + DPO

Settings name keys of the profile's `training` or `generation` (or `lora.r`, `lora.alpha`), and
of `align` for --align variants: each trained adapter is preference-tuned with each of them
(the align stage's code) before decoding; `method=none` is the SFT adapter as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.settings import change_profile, checked, parse_variant, read_params
from core.decode.answer import generate_responses
from core.train import dpo
from core.train.sft import fine_tune

log = logging.getLogger("sweep")

# The grid of docs/quality.md's real-row table. Every variant names each key it sets, so a row
# means the same whatever params.yaml's defaults are at the time.
TRAININGS = [
    "e2-lr1e-3:epochs=2,learning_rate=1e-3",
    "e3-lr5e-4:epochs=3,learning_rate=5e-4",
    "e4-lr5e-4:epochs=4,learning_rate=5e-4",
]
_BEAMS = "do_sample=false,mbr_candidates=0,length_penalty=1.0,max_new_tokens=120,length_grid=[80,100,120,140,160]"
DECODINGS = [
    f"b4-rp1.2-ng6:num_beams=4,repetition_penalty=1.2,no_repeat_ngram_size=6,{_BEAMS}",
    f"b4-rp1.2-ng4:num_beams=4,repetition_penalty=1.2,no_repeat_ngram_size=4,{_BEAMS}",
    f"b4-rp1.0-ng6:num_beams=4,repetition_penalty=1.0,no_repeat_ngram_size=6,{_BEAMS}",
    f"b4-rp1.2:num_beams=4,repetition_penalty=1.2,no_repeat_ngram_size=0,{_BEAMS}",
    f"greedy-rp1.2-ng6:num_beams=1,repetition_penalty=1.2,no_repeat_ngram_size=6,{_BEAMS}",
]


def variant_params(
    params_path: str, training: dict, generation: dict, align: dict | None = None, data: dict | None = None
):
    """params.yaml with a variant's settings on the selected profile (and on `align`, `data`),
    read and checked by the loader every stage uses."""
    raw = read_params(params_path)
    change_profile(
        raw,
        training={k: v for k, v in training.items() if not k.startswith("lora.")},
        generation=generation,
        lora={k.split(".", 1)[1]: v for k, v in training.items() if k.startswith("lora.")},
    )
    # a list on the command line: rejected=llm+sft (a comma separates settings)
    raw["align"].update(
        {k: v.split("+") if k == "rejected" and isinstance(v, str) else v for k, v in (align or {}).items()}
    )
    raw["data"].update(data or {})
    return checked(raw, params_path)


def dvc_command(params, training: dict, generation: dict, align: dict | None = None) -> str:
    def text(v):
        return str(v).lower() if isinstance(v, bool) else v

    flags = [
        f"-S models.{params.model}.{'' if k.startswith('lora.') else 'training.'}{k}={v}" for k, v in training.items()
    ]
    flags += [f"-S models.{params.model}.generation.{k}={text(v)}" for k, v in generation.items()]
    flags += [f"-S align.{k}={text(v)}" for k, v in (align or {}).items()]
    return "dvc exp run " + " ".join(flags)


def aligned_models(
    params_path: str, params, train_rows: list[dict], val_rows: list[dict], sft_model, aligns: list[str]
):
    """(align variant name, its settings, model, align metrics) for each --align variant; `none`
    yields the SFT model itself. Each DPO starts from the SFT adapter, saved once."""
    from core.models.families import model_for
    from core.train.dpo import build_pairs, sample_pairs

    with tempfile.TemporaryDirectory() as scratch:
        sft_dir = Path(scratch) / "sft"
        for variant in aligns:
            name, settings = parse_variant(variant)
            config = variant_params(params_path, {}, {}, settings).align
            if config.method == "none":
                yield name, settings, sft_model, {}
                continue
            if not sft_dir.exists():
                sft_model.save_adapter(sft_dir)
            model = model_for(params.profile, params.prompt.system)
            model.load_adapter(sft_dir, trainable=True)
            own = dpo.own_answers(model, train_rows + val_rows) if "sft" in config.rejected else None
            pairs = sample_pairs(build_pairs(train_rows, config.rejected, own).pairs, config.max_pairs, config.seed)
            val_pairs = sample_pairs(build_pairs(val_rows, config.rejected, own).pairs, config.max_pairs, config.seed)
            metrics = dpo.align(model, pairs, val_pairs, config, Path(scratch) / f"run-{name}")
            log.info(
                "%s aligned: %d pairs, %d steps in %.0f s, val reward accuracy %s",
                name,
                metrics["pairs"]["train"],
                metrics["steps"],
                metrics["train_runtime_s"],
                metrics.get("val_reward_accuracy"),
            )
            yield name, settings, model, metrics
            model.cleanup_model()


def epoch_snapshots(model):
    """A trainer callback keeping the trainable weights at every evaluation (each epoch's end)."""
    from transformers import TrainerCallback

    class Snapshots(TrainerCallback):
        def __init__(self) -> None:
            self.taken: list[tuple[float, float, dict]] = []  # epoch, val loss, weights

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            weights = {n: p.detach().to("cpu", copy=True) for n, p in model.model.named_parameters() if p.requires_grad}
            self.taken.append(
                (round(float(state.epoch or 0), 2), float((metrics or {}).get("eval_loss", "nan")), weights)
            )

    return Snapshots()


def score_epochs(model, snapshots, val_rows: list[dict], generation) -> list[dict]:
    """Validation ROUGE-L (at the decoding's max_new_tokens) of every epoch's weights: does the
    epoch with the lowest validation loss also answer best? The model's weights are put back after."""
    import torch

    from core.decode.length import cut
    from core.metrics.rouge import rouge

    current = {n: p.detach().to("cpu", copy=True) for n, p in model.model.named_parameters() if p.requires_grad}
    references = [row["Clinician"] for row in val_rows]
    scores = []
    for epoch, loss, weights in snapshots.taken:
        with torch.no_grad():
            for n, p in model.model.named_parameters():
                if n in weights:
                    p.copy_(weights[n].to(p.device, p.dtype))
        out = generate_responses(model, val_rows, dataclasses.replace(generation, length_grid=[]))
        texts = [p.text for p in cut(out, generation.max_new_tokens, model.decode)]
        scores.append({"epoch": epoch, "val_loss": loss, "rougeL": rouge(texts, references)["rougeL"]})
    with torch.no_grad():
        for n, p in model.model.named_parameters():
            if n in current:
                p.copy_(current[n].to(p.device, p.dtype))
    return scores


def decoding_record(tuned, val_rows: list[dict], g, keep_texts: bool) -> dict:
    """One decoding's validation record: answers at the longest length, the length chosen on these
    rows (optimistic) and params' max_new_tokens (not chosen), scores beside the echo, costs."""
    from core.decode.length import choose_length, cut, for_answering
    from core.metrics.report import validation_report
    from core.metrics.rouge import rouge

    references = [row["Clinician"] for row in val_rows]
    out_gen = generate_responses(tuned, val_rows, for_answering(g, len(val_rows)))
    length = choose_length(out_gen, references, g, tuned.decode)
    predictions = {
        row["Master_Index"]: p
        for row, p in zip(val_rows, cut(out_gen, length.max_new_tokens, tuned.decode), strict=True)
    }
    at_params = [p.text for p in cut(out_gen, g.max_new_tokens, tuned.decode)]
    summary = validation_report(val_rows, predictions).summary
    texts = [predictions[row["Master_Index"]].text for row in val_rows]
    record = {
        "val_rows": len(val_rows),
        "model": summary["model"],
        "prompt_echo": summary["prompt_echo"],
        "loop_share": summary["loop_share"]["model"],
        "length": length.as_record(),
        "rougeL_at_max_new_tokens": rouge(at_params, references)["rougeL"],
        "mean_words": sum(len(t.split()) for t in texts) / max(len(val_rows), 1),
        "cut_at_max_new_tokens": summary["cut_at_max_new_tokens"],
        "generate_s": out_gen.seconds,
        "decoding_work_ratio": out_gen.decoding_work_ratio,
        # per row, in validation order: paired comparisons between variants
        "rows_rougeL": [rouge([text], [ref])["rougeL"] for text, ref in zip(texts, references, strict=True)],
    }
    if keep_texts:  # the answers at the longest length, for reading (real rows: never commit them)
        record.update(texts=out_gen.texts, ids=[row["Master_Index"] for row in val_rows])
    return record


def log_record(record: dict, split_seed: int, max_new_tokens: int) -> None:
    log.info(
        "%s / %s / %s / seed %d: ROUGE-L %.4f at %d tokens (%.4f at %d; echo %.4f), loops %.2f, %.0f words, %.1f s",
        record["training"],
        record["align"],
        record["decoding"],
        split_seed,
        record["model"]["rougeL"],
        record["length"]["max_new_tokens"],
        record["rougeL_at_max_new_tokens"],
        max_new_tokens,
        record["prompt_echo"]["rougeL"],
        record["loop_share"],
        record["mean_words"],
        record["generate_s"],
    )


def run_training(
    params_path: str,
    train_variant: str,
    decodings: list[str],
    out: Path,
    aligns: list[str] | None = None,
    seed: int | None = None,
    per_epoch: bool = False,
    keep_texts: bool = False,
) -> None:
    from core.data import read_vignettes, split_train_val
    from core.models.families import model_for

    name, training = parse_variant(train_variant)
    data = {} if seed is None else {"seed": seed}
    params = variant_params(params_path, training, {}, data=data)
    labelled = read_vignettes(params.data.train_csv, labelled=True)
    train_rows, val_rows = split_train_val(labelled, params.data.val_fraction, params.data.seed)
    model = model_for(params.profile, params.prompt.system)
    snapshots = epoch_snapshots(model) if per_epoch else None
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = fine_tune(
            model, train_rows, val_rows, params.profile.training, run_dir, callbacks=[snapshots] if snapshots else []
        )
    log.info(
        "%s (split seed %d) trained: %d steps in %.0f s, val loss %.3f (best epoch %s)",
        name,
        params.data.seed,
        metrics["steps"],
        metrics["train_runtime_s"],
        metrics["val_loss"],
        metrics.get("best_epoch"),
    )
    epochs = None
    for align_name, align, tuned, align_metrics in aligned_models(
        params_path, params, train_rows, val_rows, model, aligns or ["none:method=none"]
    ):
        for decoding in decodings:
            decode_name, generation = parse_variant(decoding)
            g = variant_params(params_path, training, generation, data=data).profile.generation
            record = decoding_record(tuned, val_rows, g, keep_texts)
            if per_epoch and epochs is None and align_name == "none":
                epochs = score_epochs(tuned, snapshots, val_rows, g)
            record.update(
                training=name,
                align=align_name,
                decoding=decode_name,
                split_seed=params.data.seed,
                train_rows=len(train_rows),
                val_loss=metrics["val_loss"],
                best_epoch=metrics.get("best_epoch"),
                val_loss_by_epoch=metrics.get("val_loss_by_epoch"),
                epochs_scored=epochs,
                train_s=metrics["train_runtime_s"] + align_metrics.get("train_runtime_s", 0),
                steps=metrics["steps"],
                align_metrics=align_metrics,
                command=dvc_command(params, training, generation, align),
            )
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log_record(record, params.data.seed, g.max_new_tokens)
    model.cleanup_model()


def table(path: Path) -> str:
    """The Markdown table of a sweep file: one line a (training, align, decoding), averaged over
    the splits it ran on (the spread is the lowest and highest split's ROUGE-L)."""
    import statistics

    groups: dict[tuple, dict] = {}
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        key = (record["training"], record.get("align", "none"), record["decoding"])
        groups.setdefault(key, {})[record.get("split_seed")] = record  # a split run twice counts once
    lines = [
        "| training | align | decoding | splits | ROUGE-L (chosen length) | spread | ROUGE-L at max_new_tokens | "
        "echo ROUGE-L | model - echo | loops | length chosen | words | val loss | best epoch | generate s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for (training, align, decoding), by_seed in groups.items():
        rs = list(by_seed.values())
        chosen = [r["model"]["rougeL"] for r in rs]
        echo = [r["prompt_echo"]["rougeL"] for r in rs]
        mean = statistics.mean
        rows.append(
            (
                mean(chosen),
                f"| {training} | {align} | {decoding} | {len(rs)} | **{mean(chosen):.3f}** | "
                f"{min(chosen):.3f}-{max(chosen):.3f} | "
                f"{mean(r.get('rougeL_at_max_new_tokens', r['model']['rougeL']) for r in rs):.3f} | "
                f"{mean(echo):.3f} | {mean(chosen) - mean(echo):+.3f} | "
                f"{mean(r.get('loop_share', 0) for r in rs):.2f} | "
                f"{'/'.join(str(r.get('length', {}).get('max_new_tokens', '-')) for r in rs)} | "
                f"{mean(r['mean_words'] for r in rs):.0f} | {mean(r['val_loss'] for r in rs):.3f} | "
                f"{'/'.join(str(r.get('best_epoch', '-')) for r in rs)} | {mean(r['generate_s'] for r in rs):.1f} |",
            )
        )
    return "\n".join(lines + [line for _, line in sorted(rows, key=lambda x: -x[0])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", action="append", help="name:key=value,... (repeatable); default: a built-in grid")
    parser.add_argument("--decode", action="append", help="name:key=value,... (repeatable); default: a built-in grid")
    parser.add_argument(
        "--align", action="append", help="name:key=value,... of align (repeatable); default: none:method=none"
    )
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--workers", type=int, default=1, help="trainings run in this many processes at once")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a finished sweep file and stop")
    parser.add_argument(
        "--seeds", default="", help="data.seed of each split to run on, comma-separated (default: params.yaml's)"
    )
    parser.add_argument(
        "--per-epoch", action="store_true", help="also score every epoch's weights (first decoding, ROUGE-L)"
    )
    parser.add_argument(
        "--keep-texts", action="store_true", help="also write the answers (the data's terms may forbid sharing them)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.table:
        print(table(args.table))
        return
    trainings, decodings = args.train or TRAININGS, args.decode or DECODINGS
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or [None]
    if args.workers <= 1:
        for variant in trainings:
            for seed in seeds:
                run_training(
                    args.params, variant, decodings, args.out, args.align, seed, args.per_epoch, args.keep_texts
                )
    else:  # one process per training, align variant and split, at most `workers` at a time (they share the GPU)
        running: list[subprocess.Popen] = []
        pending = [(t, a, seed) for t in trainings for a in (args.align or [None]) for seed in seeds]
        while pending or running:
            running = [p for p in running if p.poll() is None]
            while pending and len(running) < args.workers:
                variant, align, seed = pending.pop(0)
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.sweep",
                    "--params",
                    args.params,
                    "--out",
                    str(args.out),
                    "--train",
                    variant,
                    *sum((["--decode", d] for d in decodings), []),
                    *(["--align", align] if align else []),
                    *(["--seeds", str(seed)] if seed is not None else []),
                    *(["--per-epoch"] if args.per_epoch else []),
                    *(["--keep-texts"] if args.keep_texts else []),
                ]
                running.append(subprocess.Popen(argv, env=os.environ.copy()))
            time.sleep(2)
    print(table(args.out))


if __name__ == "__main__":
    main()
