"""What a vignette costs in each profile's real tokens, and what `max_seq_length` cuts: the prompt as
the family's template renders it (system prompt, context, vignette, assistant header), the clinician's
answer with its end of turn, and the answer prefix (`answer_prefix: echo`), counted with the tiny
stand-ins' real tokenizers (benchmarks/standins.py), through the same family code as training.

    python -m benchmarks.token_counts --train ../real/train.csv --test ../real/test.csv

Prints one table (median, p90 and max per column; how many training rows the window cuts or drops).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.settings import change_profile, checked, read_params
from core.train.sft import training_examples


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def count(family: str, checkpoint: Path, train: list[dict], test: list[dict]) -> dict:
    from core.data import TARGET
    from core.metrics.echo import answer_prefix
    from core.models.families import model_for

    params = checked(change_profile(read_params(), family, name=str(checkpoint), backend="hf", load_in_4bit=False))
    model = model_for(params.profile, params.prompt.system)
    model.load()
    prompts = [len(model.encode(model.prompt_for(row))) for row in train + test]
    answers = [len(model.encode(row[TARGET].strip() + model.end_of_turn)) for row in train]
    prefixes = [len(model.encode(answer_prefix(row, "echo"))) for row in train + test]
    examples = training_examples(model, train)
    window = params.profile.max_seq_length
    return {
        "family": family,
        "window": window,
        "prompt": prompts,
        "answer": answers,
        "echo prefix": prefixes,
        "prompt + answer": [p + a for p, a in zip(prompts, answers, strict=True)],
        "cut": len(examples.prompt_cut),
        "dropped": len(examples.dropped),
        "train_rows": len(train),
    }


def table(results: list[dict]) -> str:
    columns = ["prompt", "answer", "prompt + answer", "echo prefix"]
    lines = [
        "| profile | " + " | ".join(f"{c} (median / p90 / max)" for c in columns) + " | over max_seq_length |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for r in results:
        cells = [f"{statistics.median(r[c]):.0f} / {percentile(r[c], 0.9)} / {max(r[c])}" for c in columns]
        over = f"{r['cut']} of {r['train_rows']} cut, {r['dropped']} dropped (window {r['window']})"
        lines.append(f"| {r['family']} | " + " | ".join(cells) + f" | {over} |")
    return "\n".join(lines)


def main() -> None:
    from benchmarks.standins import build_standin
    from core.data import read_vignettes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="a labelled CSV (the challenge's schema)")
    parser.add_argument("--test", help="an unlabelled CSV: its prompts are counted too")
    parser.add_argument("--families", default="qwen3,llama32")
    args = parser.parse_args()
    train = read_vignettes(args.train, labelled=True)
    test = read_vignettes(args.test, labelled=False) if args.test else []
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            count(family, build_standin(family, "tiny", Path(tmp) / family), train, test)
            for family in args.families.split(",")
        ]
    print(f"{len(train)} labelled rows{f' and {len(test)} test prompts' if test else ''}\n")
    print(table(results))


if __name__ == "__main__":
    main()
