"""The files answers travel in: prediction files (one per split) and the submission file."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from core import atomic
from core.data import ID, TARGET, DataError, read_csv_records
from core.metrics.echo import prompt_echo
from core.metrics.rouge import normalise

# `chars` is the length of the text as generated: an integrity record, so that a text emptied
# or cut after predict is told apart from an answer the model really left empty.
PREDICTION_COLUMNS = [ID, TARGET, "new_tokens", "chars", "stopped"]
SUBMISSION_COLUMNS = [ID, TARGET]


@dataclass(frozen=True)
class Prediction:
    text: str
    new_tokens: int
    stopped: bool  # the model ended its turn (False: cut at max_new_tokens)


def _csv_text(rows: list[list], header: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_predictions(path: str | Path, rows: list[dict], predictions: list[Prediction]) -> None:
    atomic.write_text(path, predictions_csv(rows, predictions))


def predictions_csv(rows: list[dict], predictions: list[Prediction]) -> str:
    """The predictions file's text: id, response, new tokens, characters, stopped."""
    body = []
    for row, p in zip(rows, predictions, strict=True):
        # csv.writer leaves a bare carriage return unquoted and every reader takes it for the end
        # of the row: models do emit them, so line ends become "\n" before the text is written.
        text = p.text.replace("\r\n", "\n").replace("\r", "\n")
        body.append([row[ID], text, p.new_tokens, len(text), int(p.stopped)])
    return _csv_text(body, PREDICTION_COLUMNS)


def read_predictions(path: str | Path, rows: list[dict]) -> dict[str, Prediction]:
    """Predictions by id, checked against the rows they are for: every id once, no stranger,
    each text as long as its generation record says. An empty text is then an answer the model
    really left empty, which the caller decides what to do with."""
    path = Path(path)
    records = read_csv_records(path, PREDICTION_COLUMNS, when_missing="run the predict stage first")
    expected = {row[ID] for row in rows}
    found: dict[str, tuple[int, Prediction]] = {}
    for number, record in enumerate(records, start=1):
        where = f"{path}: row {number}"
        key = (record.get(ID) or "").strip()
        if key not in expected:
            raise DataError(f"{where}, column {ID!r}: id {key!r} is not in the rows being predicted")
        if key in found:
            raise DataError(f"{where}, column {ID!r}: duplicate id {key!r} (first in row {found[key][0]})")
        text = record[TARGET] or ""
        if record["chars"] != str(len(text)):
            what = "empty" if not text.strip() else f"{len(text)} characters long"
            raise DataError(
                f"{where}, column {TARGET!r}: the text is {what} but predict wrote {record['chars']!r} characters; "
                "the file was changed or damaged after predict: rerun it"
            )
        try:
            new_tokens = int(record["new_tokens"])
        except ValueError:
            raise DataError(f"{where}, column 'new_tokens': not a count: {record['new_tokens']!r}") from None
        found[key] = (number, Prediction(text, new_tokens, record["stopped"] == "1"))
    absent = sorted(expected - set(found))
    if absent:
        raise DataError(f"{path}: column {ID!r}: {len(absent)} id(s) have no prediction, first {absent[0]!r}")
    return {key: prediction for key, (_, prediction) in found.items()}


def build_submission(rows: list[dict], predictions: dict[str, Prediction]) -> tuple[list[list[str]], int]:
    """Submission rows (id, host-normalised text) in test order, and how many empty answers
    were replaced by the prompt-echo text."""
    out, replaced = [], 0
    for row in rows:
        # (a U+FFFD, a decoding leftover no input holds, goes too: predictions made before tidy_answer dropped it)
        text = normalise(predictions[row[ID]].text.replace("\ufffd", ""))
        if not text:
            text, replaced = prompt_echo(row), replaced + 1
        out.append([row[ID], text])
    return out, replaced


def write_submission(path: str | Path, rows: list[dict], submission: list[list[str]]) -> None:
    """Write the submission CSV after checking it (`submission_csv`)."""
    atomic.write_text(path, submission_csv(path, rows, submission))


def submission_csv(path: str | Path, rows: list[dict], submission: list[list[str]]) -> str:
    """The submission CSV's text, checked: every test id exactly once, no empty text (`path` names it in
    the error)."""
    ids = [r[ID] for r in rows]
    got = [s[0] for s in submission]
    if sorted(got) != sorted(ids) or len(set(got)) != len(got):
        missing, extra = sorted(set(ids) - set(got)), sorted(set(got) - set(ids))
        raise DataError(
            f"{path}: the submission must hold every test id once (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, {len(got) - len(set(got))} duplicated)"
        )
    empty = [key for key, text in submission if not text.strip()]
    if empty:
        raise DataError(f"{path}: empty response for id {empty[0]!r}")
    return _csv_text(submission, SUBMISSION_COLUMNS)
