"""submit: the challenge submission from the test predictions, normalised as the host scores."""

import logging

from core import atomic
from core.predictions import build_submission, read_predictions, write_submission
from stages import run

SUBMISSION = "submissions/submission.csv"
METRICS = "metrics/submit.json"


def main() -> None:
    rows = atomic.read_jsonl("data/prepared/test.jsonl")
    predictions = read_predictions("data/predictions/test.csv", rows)
    submission, replaced = build_submission(rows, predictions)
    write_submission(SUBMISSION, rows, submission)
    atomic.write_json(METRICS, {"rows": len(submission), "empty_replaced_by_prompt_echo": replaced})
    if replaced:
        logging.warning("%d empty responses were replaced by the prompt-echo text", replaced)
    logging.info("wrote %s (%d rows)", SUBMISSION, len(submission))


if __name__ == "__main__":
    run(main)
