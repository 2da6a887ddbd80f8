"""The data contract: reading and checking the challenge CSVs, and the train/validation split.
(The host's normalisation and the prompt echo are the metric's: core/metrics/.)

A row is a plain dict keyed by the challenge's column names, so prepared JSONL files read
the same as the CSVs they came from.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pandas as pd

from core.errors import UserError

ID, PROMPT, TARGET, PANEL = "Master_Index", "Prompt", "Clinician", "Clinical Panel"
CONTEXT_COLUMNS = ["County", "Health level", "Years of Experience", "Nursing Competency", PANEL]
INPUT_COLUMNS = [ID, PROMPT, *CONTEXT_COLUMNS]
# Answers by commercial LLMs beside the clinician's in the labelled file: optional, kept when there
# (a missing one reads as empty), the rejected side of preference pairs (core/train/dpo.py).
LLM_COLUMNS = ["GPT4.0", "LLAMA", "GEMINI"]


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, and the row and column where there is one."""


def read_csv_records(path: str | Path, required: list[str], when_missing: str = "") -> list[dict]:
    """The records of a UTF-8 CSV whose header has every column in `required`; a DataError naming
    the file otherwise (`when_missing`: what to do about a missing file, appended to its message).
    For files this project or a user writes by hand; the challenge CSVs go through read_vignettes."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: column {missing[0]!r} is missing (the header has: {', '.join(header)})")
            return list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found{f'; {when_missing}' if when_missing else ''}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8; save the file as UTF-8") from None


def read_vignettes(path: str | Path, *, labelled: bool) -> list[dict]:
    """Read and check a challenge CSV (train when `labelled`, else test).

    Row numbers in errors count data rows from 1, the header not counted, as a spreadsheet
    shows them one below the header.
    """
    path = Path(path)
    required = INPUT_COLUMNS + ([TARGET] if labelled else [])
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; expected a CSV whose header has {', '.join(required)}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte {err.start} is {raw[err.start : err.start + 1]!r}); "
            "save the file as UTF-8"
        ) from None
    header = text.lstrip().splitlines()[0]
    for sep in (";", "\t", "|"):
        if sep in header and "," not in header:
            raise DataError(
                f"{path}: line 1: the header is separated by {sep!r}, not "
                "commas; save the file as a comma-separated CSV"
            )
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a well-formed CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} is missing (the header has: {', '.join(frame.columns)})")

    kept = required + ([c for c in LLM_COLUMNS if c in frame.columns] if labelled else [])
    rows, seen = [], {}
    for number, record in enumerate(frame[kept].to_dict("records"), start=1):
        row = {k: (v.strip() if k != PROMPT and k != TARGET else v) for k, v in record.items()}
        where = f"{path}: row {number}"
        if not row[ID]:
            raise DataError(f"{where}, column {ID!r}: empty id")
        if any(ch in row[ID] for ch in "\r\n"):  # the submission writes one row a line: an id must fit on one
            raise DataError(f"{where}, column {ID!r}: the id {row[ID]!r} holds a line break")
        if row[ID] in seen:
            raise DataError(f"{where}, column {ID!r}: duplicate id {row[ID]!r} (first seen in row {seen[row[ID]]})")
        seen[row[ID]] = number
        if not row[PROMPT].strip():
            raise DataError(f"{where}, column {PROMPT!r}: empty prompt")
        if labelled and not row[TARGET].strip():
            raise DataError(f"{where}, column {TARGET!r}: empty clinician response in a training file")
        years = row["Years of Experience"]
        if years:
            try:
                float(years)
            except ValueError:
                raise DataError(
                    f"{where}, column 'Years of Experience': expected a number or nothing, got {years!r}"
                ) from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file has a header but no rows")
    return rows


def require_vignette(text: object, where: str = "") -> None:
    """A DataError unless `text` holds a vignette to answer; `where` names the file, row and column."""
    if not str(text or "").strip():
        raise DataError(f"{where}: empty vignette" if where else "the vignette is empty: there is nothing to answer")


def panel_of(row: dict) -> str:
    """The row's clinical panel in one canonical spelling (the raw data varies in case and spacing)."""
    return " ".join(row.get(PANEL, "").upper().split()) or "UNKNOWN"


def split_labelled(rows: list[dict], data) -> tuple[list[dict], list[dict]]:
    """The train and validation rows `data` (params.yaml's data section) asks for: fold `data.fold` of
    `data.folds` held out where folds are set, else a `data.val_fraction` share."""
    if data.folds:
        return split_fold(rows, data.folds, data.fold, data.seed)
    return split_train_val(rows, data.val_fraction, data.seed)


def split_fold(rows: list[dict], folds: int, fold: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Fold `fold` of a seeded K-fold split stratified by clinical panel, held out for validation.

    Each panel's rows are shuffled (seeded) and the panels, in name order, are laid end to end; the i-th
    row of that order goes to fold i mod K. Every panel is spread over the folds as evenly as its size
    allows, fold sizes differ by one row at most, and the K folds' validation rows together are every
    labelled row once. Both parts keep the input order.
    """
    rng = random.Random(seed)
    order = []
    for _, members in sorted(_by_panel(rows).items()):
        order.extend(rng.sample(members, len(members)))
    val_idx = {index for position, index in enumerate(order) if position % folds == fold}
    return [r for i, r in enumerate(rows) if i not in val_idx], [r for i, r in enumerate(rows) if i in val_idx]


def _by_panel(rows: list[dict]) -> dict[str, list[int]]:
    by_panel: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_panel.setdefault(panel_of(row), []).append(i)
    return by_panel


def split_train_val(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split stratified by clinical panel.

    Each panel with at least two rows gives round(n * val_fraction) of them (at least one,
    never all) to validation; a panel with one row stays in training. Both parts keep the
    input order, so the same rows and seed always give the same files. A fraction of 0 keeps
    every row for training (a final run for a submission) and leaves validation empty.
    """
    if val_fraction == 0:
        return list(rows), []
    by_panel = _by_panel(rows)
    rng = random.Random(seed)
    val_idx: set[int] = set()
    for panel in sorted(by_panel):
        members = by_panel[panel]
        if len(members) < 2:
            continue
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val_idx.update(rng.sample(members, n_val))
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val
