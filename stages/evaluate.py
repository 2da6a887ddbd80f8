"""evaluate: ROUGE of the validation predictions against the clinicians, beside the prompt echo and the
answer prefix alone (the prefix predict wrote before the model's tokens, as metrics/predict.json records it):
overall with intervals, by panel, and by row (what notebooks/compare.py pairs runs and pools folds with)."""

import logging

from core import atomic
from core.metrics.report import validation_report
from core.paths import Paths, read_table
from core.predictions import read_predictions
from stages import run


def evaluate(paths: Paths, outputs: atomic.Outputs) -> None:
    rows = atomic.read_jsonl(paths.val)
    if not rows:  # data.val_fraction: 0, every labelled row went into training
        outputs.write_json(
            paths.eval_metrics, {"rows": 0, "validation": "none: data.val_fraction is 0, so there is nothing to score"}
        )
        outputs.write_json(paths.rouge_by_panel, [])
        outputs.write_json(paths.rouge_by_row, [])
        logging.warning("no validation rows (data.val_fraction is 0): nothing scored")
        return
    predictions = read_predictions(paths.val_predictions, rows)
    prefix_kind = atomic.read_json(paths.predict_metrics).get("answer_prefix", "none")
    summary, per_panel, per_row = validation_report(rows, predictions, prefix_kind)
    outputs.write_json(paths.eval_metrics, summary)
    outputs.write_json(paths.rouge_by_panel, per_panel)
    outputs.write_json(paths.rouge_by_row, per_row)
    model, gain = summary["model"], summary["model_minus_prefix"]
    logging.info(
        "val ROUGE-L: model %.4f (95%% interval %.4f to %.4f), answer prefix alone (%s) %.4f, prompt echo %.4f; "
        "the model's own tokens add %+.4f (paired 95%% interval %+.4f to %+.4f)",
        model["rougeL"],
        model["rougeL_low"],
        model["rougeL_high"],
        prefix_kind,
        summary["answer_prefix"]["rougeL"],
        summary["prompt_echo"]["rougeL"],
        gain["rougeL"],
        gain["rougeL_low"],
        gain["rougeL_high"],
    )
    if summary["model_tokens"]["answers_without"] == len(rows):
        logging.warning("no validation answer holds a model token: every answer is the prefix alone")


def main(outputs: atomic.Outputs) -> None:
    evaluate(read_table(), outputs)


if __name__ == "__main__":
    run(main)
