"""evaluate: ROUGE of the validation predictions against the clinicians, beside the prompt-echo baseline."""
import logging

from core import atomic
from core.predictions import read_predictions
from core.metrics.report import validation_report
from stages import run

METRICS = "metrics/eval.json"
PER_PANEL = "plots/rouge_by_panel.json"


def main() -> None:
    rows = atomic.read_jsonl("data/prepared/val.jsonl")
    if not rows:  # data.val_fraction: 0, every labelled row went into training
        atomic.write_json(METRICS, {"rows": 0, "validation": "none: data.val_fraction is 0, so there is nothing to score"})
        atomic.write_json(PER_PANEL, [])
        logging.warning("no validation rows (data.val_fraction is 0): nothing scored")
        return
    predictions = read_predictions("data/predictions/val.csv", rows)
    summary, per_panel = validation_report(rows, predictions)
    atomic.write_json(METRICS, summary)
    atomic.write_json(PER_PANEL, per_panel)
    logging.info("val ROUGE-L: model %.4f, prompt echo %.4f", summary["model"]["rougeL"], summary["prompt_echo"]["rougeL"])


if __name__ == "__main__":
    run(main)
