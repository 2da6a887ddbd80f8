"""evaluate: ROUGE of the validation predictions against the clinicians, beside the prompt-echo baseline."""
import logging

from core import io
from core.predictions import read_predictions, validation_report
from stages import run

METRICS = "metrics/eval.json"
PER_PANEL = "plots/rouge_by_panel.json"


def main() -> None:
    rows = io.read_jsonl("data/prepared/val.jsonl")
    predictions = read_predictions("data/predictions/val.csv", rows)
    summary, per_panel = validation_report(rows, predictions)
    io.write_json(METRICS, summary)
    io.write_json(PER_PANEL, per_panel)
    logging.info("val ROUGE-L: model %.4f, prompt echo %.4f", summary["model"]["rougeL"], summary["prompt_echo"]["rougeL"])


if __name__ == "__main__":
    run(main)
