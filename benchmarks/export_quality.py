"""Validation ROUGE-L of the exported model against the PyTorch adapter, decoding by decoding.

    python -m benchmarks.export_quality --decode greedy:num_beams=1,repetition_penalty=1.0 \\
        --decode b4:num_beams=4,repetition_penalty=1.0 --decode b4-rp1.2:num_beams=4,repetition_penalty=1.2

Run after `dvc repro` (it reads models/aligned, models/export and data/prepared/val.jsonl). Each
`--decode NAME:key=value,...` overrides the selected profile's generation keys. The deploy stage
makes the same comparison at the profile's own decoding; this one separates what quantization
costs from what the engines' different decoding costs (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging

from benchmarks.settings import parse_variant
from core import atomic
from core.config import load_params
from core.data import TARGET
from core.decode.answer import generate_responses
from core.export.runtime import ExportedModel
from core.metrics.echo import prompt_echo
from core.metrics.loops import loop_share
from core.metrics.rouge import rouge
from core.models.families import model_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode", action="append", required=True, help="NAME:key=value,... (generation keys)")
    parser.add_argument("--export", default="models/export")
    parser.add_argument("--adapter", default="models/aligned")
    parser.add_argument("--json", help="append the records here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    rows = atomic.read_jsonl("data/prepared/val.jsonl")
    references = [row[TARGET] for row in rows]
    echo = rouge([prompt_echo(r) for r in rows], references)["rougeL"]
    exported = ExportedModel(args.export, adapter=args.adapter)
    model = model_for(params.profile, params.prompt.system)
    model.load_adapter(args.adapter)
    records = []
    for name, overrides in map(parse_variant, args.decode):
        # one length, max_new_tokens: the length choice is predict's (both engines cut alike)
        generation = dataclasses.replace(params.profile.generation, **{"length_grid": [], **overrides})
        record = {
            "decoding": name,
            **overrides,
            "rows": len(rows),
            "prompt_echo": echo,
            "precision": exported.info["precision"],
        }
        for engine, answer in (
            ("torch", functools.partial(generate_responses, model)),
            ("export", exported.answer_rows),
        ):
            out = answer(rows, generation)
            record[engine] = rouge(out.texts, references)["rougeL"]
            record[f"{engine}_loop_share"] = loop_share(out.texts)
            record[f"{engine}_seconds_per_row"] = out.seconds / len(rows)
            record[f"{engine}_model_tokens"] = sum(out.new_tokens) / len(rows)
        record["loss"] = record["torch"] - record["export"]
        logging.info("%s", record)
        records.append(record)
    print(
        "| decoding | PyTorch | export | loss | prompt echo | loops PyTorch / "
        "export | model tokens PyTorch / export | s/row PyTorch (batched) | s/row export (batch 1) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        print(
            f"| {r['decoding']} | {r['torch']:.3f} | {r['export']:.3f} | {r['loss']:+.3f} | {r['prompt_echo']:.3f} | "
            f"{r['torch_loop_share']:.2f} / {r['export_loop_share']:.2f} | "
            f"{r['torch_model_tokens']:.1f} / {r['export_model_tokens']:.1f} | "
            f"{r['torch_seconds_per_row']:.1f} | {r['export_seconds_per_row']:.1f} |"
        )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
