"""Sweep training and decoding settings of one profile and score each on the validation split.

The pipeline's own code runs each variant: the configured data split as `prepare` makes it,
`fine_tune` as `finetune` calls it, `generate_responses` and `validation_report` as `predict`
and `evaluate` call them. What differs from `dvc exp run --queue -S ...` over the same settings
is only that each trained adapter is kept in memory and decoded with every decoding variant,
instead of one experiment per pair, so a grid of T trainings x D decodings costs T trainings.
The DVC command that reproduces any row is printed beside it.

    python -m benchmarks.sweep --out sweep.jsonl                          # the default grid
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
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("sweep")

# Chosen to answer what the real-data figures left open (docs/quality.md): how many epochs,
# which learning rate, and how much of the gain is the decoding.
# The grid of docs/quality.md. Every variant names each key it sets, so a row means the same
# whatever params.yaml's defaults are at the time.
TRAININGS = [f"e{e}:epochs={e},learning_rate=3e-4" for e in (1, 2, 4, 8)] + \
    [f"e{e}-lr1e-3:epochs={e},learning_rate=1e-3" for e in (2, 4, 6)]
_BEAMS = "do_sample=false,mbr_candidates=0,length_penalty=1.0"
DECODINGS = [
    f"greedy:num_beams=1,repetition_penalty=1.0,max_new_tokens=160,{_BEAMS}",
    f"greedy-rp1.2:num_beams=1,repetition_penalty=1.2,max_new_tokens=160,{_BEAMS}",
    f"b2-rp1.2:num_beams=2,repetition_penalty=1.2,max_new_tokens=160,{_BEAMS}",
    f"b4:num_beams=4,repetition_penalty=1.0,max_new_tokens=160,{_BEAMS}",
    f"b4-rp1.2:num_beams=4,repetition_penalty=1.2,max_new_tokens=160,{_BEAMS}",
    f"b4-rp1.3:num_beams=4,repetition_penalty=1.3,max_new_tokens=160,{_BEAMS}",
    f"b4-rp1.2-t120:num_beams=4,repetition_penalty=1.2,max_new_tokens=120,{_BEAMS}",
    f"b4-rp1.2-t200:num_beams=4,repetition_penalty=1.2,max_new_tokens=200,{_BEAMS}",
    f"b4-rp1.3-t200:num_beams=4,repetition_penalty=1.3,max_new_tokens=200,{_BEAMS}",
    "b4-rp1.2-t200-lp1.5:num_beams=4,repetition_penalty=1.2,max_new_tokens=200,do_sample=false,mbr_candidates=0,length_penalty=1.5",
    f"b8-rp1.2-t200:num_beams=8,repetition_penalty=1.2,max_new_tokens=200,{_BEAMS}",
    "mbr8-beams-t200:num_beams=8,mbr_candidates=8,repetition_penalty=1.2,max_new_tokens=200,do_sample=false,length_penalty=1.0",
    "mbr8-sampled-t200:do_sample=true,num_beams=1,mbr_candidates=8,repetition_penalty=1.2,max_new_tokens=200",
]


def parse_variant(text: str) -> tuple[str, dict]:
    """"name:key=value,key=value" -> (name, {key: value}), values read as YAML scalars."""
    import yaml

    name, _, body = text.partition(":")
    settings = {}
    for pair in filter(None, body.split(",")):
        key, _, value = pair.partition("=")
        value = yaml.safe_load(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text; on a command line it means the number
            try:
                value = float(value)
            except ValueError:
                pass
        settings[key.strip()] = value
    return name, settings


def apply(params, training: dict, generation: dict, align: dict | None = None):
    """The params with a variant's settings on the selected profile, checked like params.yaml."""
    from core.config import as_dict, parse_params

    raw = as_dict(params.profile)
    lora = {k.split(".", 1)[1]: v for k, v in training.items() if k.startswith("lora.")}
    raw["lora"].update(lora)
    raw["training"].update({k: v for k, v in training.items() if not k.startswith("lora.")})
    raw["generation"].update(generation)
    profile = {k: v for k, v in raw.items() if k not in ("key", "training", "generation")}
    return parse_params({
        "model": params.model, "data": as_dict(params.data), "prompt": as_dict(params.prompt),
        "training": raw["training"], "generation": raw["generation"], "models": {params.model: profile},
        # a list on the command line: rejected=llm+sft (a comma separates settings)
        "align": {**as_dict(params.align), **{k: v.split("+") if k == "rejected" and isinstance(v, str) else v
                                               for k, v in (align or {}).items()}},
    })


def dvc_command(params, training: dict, generation: dict, align: dict | None = None) -> str:
    def text(v):
        return str(v).lower() if isinstance(v, bool) else v

    flags = [f"-S models.{params.model}.{'' if k.startswith('lora.') else 'training.'}{k}={v}" for k, v in training.items()]
    flags += [f"-S models.{params.model}.generation.{k}={text(v)}" for k, v in generation.items()]
    flags += [f"-S align.{k}={text(v)}" for k, v in (align or {}).items()]
    return "dvc exp run " + " ".join(flags)


def aligned_models(params, train_rows: list[dict], val_rows: list[dict], sft_model, aligns: list[str]):
    """(align variant name, its settings, model, align metrics) for each --align variant; `none`
    yields the SFT model itself. Each DPO starts from the SFT adapter, saved once."""
    from core.alignment import build_pairs, direct_preference_optimisation, own_answers, sample_pairs
    from core.families import model_for

    with tempfile.TemporaryDirectory() as scratch:
        sft_dir = Path(scratch) / "sft"
        for variant in aligns:
            name, settings = parse_variant(variant)
            config = apply(params, {}, {}, settings).align
            if config.method == "none":
                yield name, settings, sft_model, {}
                continue
            if not sft_dir.exists():
                sft_model.save_adapter(sft_dir)
            model = model_for(params.profile, params.prompt.system)
            model.load_adapter(sft_dir, trainable=True)
            own = own_answers(model, train_rows + val_rows, params.profile.generation) if "sft" in config.rejected else None
            pairs = sample_pairs(build_pairs(train_rows, config.rejected, own).pairs, config.max_pairs, config.seed)
            val_pairs = sample_pairs(build_pairs(val_rows, config.rejected, own).pairs, config.max_pairs, config.seed)
            metrics = direct_preference_optimisation(model, pairs, val_pairs, config, Path(scratch) / f"run-{name}")
            log.info("%s aligned: %d pairs, %d steps in %.0f s, val reward accuracy %s", name, metrics["pairs"]["train"],
                     metrics["steps"], metrics["train_runtime_s"], metrics.get("val_reward_accuracy"))
            yield name, settings, model, metrics
            model.cleanup_model()


def run_training(params_path: str, train_variant: str, decodings: list[str], out: Path, aligns: list[str] | None = None) -> None:
    from core.config import load_params
    from core.data import read_vignettes, split_train_val
    from core.families import model_for
    from core.predictions import Prediction, validation_report
    from core.scoring import rouge

    base = load_params(params_path)
    labelled = read_vignettes(base.data.train_csv, labelled=True)
    train_rows, val_rows = split_train_val(labelled, base.data.val_fraction, base.data.seed)
    name, training = parse_variant(train_variant)
    params = apply(base, training, {})
    model = model_for(params.profile, params.prompt.system)
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = model.fine_tune(train_rows, val_rows, params.profile.training, run_dir)
    log.info("%s trained: %d steps in %.0f s, val loss %.3f", name, metrics["steps"], metrics["train_runtime_s"], metrics["val_loss"])
    for align_name, align, tuned, align_metrics in aligned_models(params, train_rows, val_rows, model, aligns or ["none:method=none"]):
        for decoding in decodings:
            decode_name, generation = parse_variant(decoding)
            variant = apply(base, training, generation)
            out_gen = tuned.generate_responses(val_rows, variant.profile.generation)
            predictions = {row["Master_Index"]: Prediction(text, n, ok) for row, text, n, ok
                           in zip(val_rows, out_gen.texts, out_gen.new_tokens, out_gen.stopped)}
            summary, _ = validation_report(val_rows, predictions)
            record = {
                "training": name, "align": align_name, "decoding": decode_name, "val_rows": len(val_rows),
                "train_rows": len(train_rows), "model": summary["model"], "prompt_echo": summary["prompt_echo"],
                "mean_words": sum(len(t.split()) for t in out_gen.texts) / max(len(val_rows), 1),
                "cut_at_max_new_tokens": summary["cut_at_max_new_tokens"],
                "val_loss": metrics["val_loss"], "train_s": metrics["train_runtime_s"] + align_metrics.get("train_runtime_s", 0),
                "steps": metrics["steps"], "align_metrics": align_metrics,
                "generate_s": out_gen.seconds, "decoding_work_ratio": out_gen.decoding_work_ratio,
                # per row, in validation order: paired comparisons between variants
                "rows_rougeL": [rouge([text], [row["Clinician"]])["rougeL"] for row, text in zip(val_rows, out_gen.texts)],
                "command": dvc_command(params, training, generation, align),
            }
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log.info("%s / %s / %s: ROUGE-L %.4f (echo %.4f), %.0f words, %.1f s", name, align_name, decode_name,
                     summary["model"]["rougeL"], summary["prompt_echo"]["rougeL"], record["mean_words"], out_gen.seconds)
    model.cleanup_model()


def table(path: Path) -> str:
    records, seen = [], set()
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        key = (record["training"], record.get("align", "none"), record["decoding"])
        if key not in seen:  # a combination run twice is listed once
            seen.add(key)
            records.append(record)
    lines = ["| training | align | decoding | ROUGE-1 | ROUGE-2 | ROUGE-L | echo ROUGE-L | words | cut | val loss | train s | generate s | work |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: -r["model"]["rougeL"]):
        m = r["model"]
        lines.append(f"| {r['training']} | {r.get('align', 'none')} | {r['decoding']} | {m['rouge1']:.3f} | {m['rouge2']:.3f} | **{m['rougeL']:.3f}** | "
                     f"{r['prompt_echo']['rougeL']:.3f} | {r['mean_words']:.0f} | {r['cut_at_max_new_tokens']} | {r['val_loss']:.3f} | "
                     f"{r['train_s']:.0f} | {r['generate_s']:.1f} | {r['decoding_work_ratio']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", action="append", help="name:key=value,... (repeatable); default: a built-in grid")
    parser.add_argument("--decode", action="append", help="name:key=value,... (repeatable); default: a built-in grid")
    parser.add_argument("--align", action="append", help="name:key=value,... of align (repeatable); default: none:method=none")
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--workers", type=int, default=1, help="trainings run in this many processes at once")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a finished sweep file and stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.table:
        print(table(args.table))
        return
    trainings, decodings = args.train or TRAININGS, args.decode or DECODINGS
    if args.workers <= 1:
        for variant in trainings:
            run_training(args.params, variant, decodings, args.out, args.align)
    else:  # one process per training and align variant, at most `workers` at a time (they share the GPU)
        running: list[subprocess.Popen] = []
        pending = [(t, a) for t in trainings for a in (args.align or [None])]
        while pending or running:
            running = [p for p in running if p.poll() is None]
            while pending and len(running) < args.workers:
                variant, align = pending.pop(0)
                argv = [sys.executable, "-m", "benchmarks.sweep", "--params", args.params, "--out", str(args.out),
                        "--train", variant, *sum((["--decode", d] for d in decodings), []),
                        *(["--align", align] if align else [])]
                running.append(subprocess.Popen(argv, env=os.environ.copy()))
            time.sleep(2)
    print(table(args.out))


if __name__ == "__main__":
    main()
