"""submit: the challenge submission from the test predictions, normalised as the host scores."""

import logging

from core import atomic
from core.paths import PATHS
from core.predictions import build_submission, read_predictions, write_submission
from stages import run


def main() -> None:
    rows = atomic.read_jsonl(PATHS.test)
    predictions = read_predictions(PATHS.test_predictions, rows)
    submission, replaced = build_submission(rows, predictions)
    write_submission(PATHS.submission, rows, submission)
    atomic.write_json(PATHS.submit_metrics, {"rows": len(submission), "empty_replaced_by_prompt_echo": replaced})
    if replaced:
        logging.warning("%d empty responses were replaced by the prompt-echo text", replaced)
    logging.info("wrote %s (%d rows)", PATHS.submission, len(submission))


if __name__ == "__main__":
    run(main)
