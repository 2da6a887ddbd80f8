"""submit: the challenge submission from the test predictions, normalised as the host scores."""

import logging

from core import atomic
from core.paths import Paths, read_table
from core.predictions import build_submission, read_predictions, submission_csv
from stages import run


def submit(paths: Paths, outputs: atomic.Outputs) -> None:
    rows = atomic.read_jsonl(paths.test)
    predictions = read_predictions(paths.test_predictions, rows)
    submission, replaced = build_submission(rows, predictions)
    outputs.write_text(paths.submission, submission_csv(paths.submission, rows, submission))
    outputs.write_json(paths.submit_metrics, {"rows": len(submission), "empty_replaced_by_prompt_echo": replaced})
    if replaced:
        logging.warning("%d empty responses were replaced by the prompt-echo text", replaced)
    logging.info("wrote %s (%d rows)", paths.submission, len(submission))


def main(outputs: atomic.Outputs) -> None:
    submit(read_table(), outputs)


if __name__ == "__main__":
    run(main)
