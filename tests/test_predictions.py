import csv

import pytest

from core.data import DataError
from core.metrics.echo import prompt_echo
from core.metrics.rouge import rouge
from core.predictions import Prediction, build_submission, read_predictions, write_predictions, write_submission
from core.metrics.report import validation_report

ROWS = [
    {"Master_Index": f"ID_{i}", "Prompt": f"I am a nurse working in a Health Centres in Kisumu county in Kenya. Case {i}: fever, cough.",
     "Clinical Panel": panel, "Clinician": f"Summary: case {i}. Diagnosis: pneumonia. Management: amoxicillin."}
    for i, panel in enumerate(["PAEDIATRICS", "Paediatrics ", "SURGERY"])
]


def test_rouge_agrees_with_a_hand_computed_example():
    # reference "the cat sat on the mat" (6 unigrams, 5 bigrams), prediction "The cat sat." (3, 2)
    scores = rouge(["The cat sat."], ["the cat sat on the mat"])
    # ROUGE-1: P = 3/3, R = 3/6 -> F = 2PR/(P+R) = 2/3
    assert scores["rouge1"] == pytest.approx(2 / 3)
    # ROUGE-2: overlap {the cat, cat sat} = 2: P = 2/2, R = 2/5 -> F = 4/7
    assert scores["rouge2"] == pytest.approx(4 / 7)
    # ROUGE-L: LCS "the cat sat" = 3 -> same as ROUGE-1 here
    assert scores["rougeL"] == pytest.approx(2 / 3)
    # mean over rows: a perfect row and an empty one
    assert rouge(["a b", ""], ["a b", "c d"])["rouge1"] == pytest.approx(0.5)


def test_validation_report_has_model_baseline_and_panels():
    predictions = {r["Master_Index"]: Prediction(r["Clinician"], 10, True) for r in ROWS}
    summary, per_panel = validation_report(ROWS, predictions)
    assert summary["model"]["rougeL"] == pytest.approx(1.0)
    assert 0 < summary["prompt_echo"]["rougeL"] < 1
    assert [p["panel"] for p in per_panel] == ["PAEDIATRICS", "SURGERY"]  # case and spaces folded
    assert per_panel[0]["rows"] == 2


def _predictions_file(tmp_path, texts=None):
    path = tmp_path / "test.csv"
    texts = texts or [f"answer {i}" for i in range(len(ROWS))]
    write_predictions(path, ROWS, [Prediction(t, 5, True) for t in texts])
    return path


def _edit(path, change):
    with open(path, encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f))
    change(records)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop(1), r"1 id\(s\) have no prediction, first 'ID_1'"),
        (lambda r: r.append(dict(r[0])), r"row 4, column 'Master_Index': duplicate id 'ID_0' \(first in row 1\)"),
        (lambda r: r[2].update(Clinician=""), r"row 3, column 'Clinician': the text is empty but predict wrote '8' characters"),
        (lambda r: r[0].update(Master_Index="ID_99"), r"row 1, column 'Master_Index': id 'ID_99' is not in the rows"),
    ],
    ids=["missing id", "duplicate id", "empty text", "unknown id"],
)
def test_damaged_predictions_are_refused(tmp_path, change, message):
    path = _predictions_file(tmp_path)
    _edit(path, change)
    with pytest.raises(DataError, match=message):
        read_predictions(path, ROWS)


def test_submit_stage_refuses_damaged_predictions_and_keeps_the_old_submission(workspace, tmp_path):
    import os
    import subprocess
    import sys

    from core import atomic

    atomic.write_jsonl(workspace / "data/prepared/test.jsonl", ROWS)
    (workspace / "data" / "predictions").mkdir(parents=True)
    path = _predictions_file(workspace / "data" / "predictions")
    env = {**os.environ, "PYTHONPATH": str(workspace)}
    run = lambda: subprocess.run([sys.executable, "-m", "stages.submit"], cwd=workspace, env=env, capture_output=True, text=True)  # noqa: E731
    assert run().returncode == 0
    good = (workspace / "submissions/submission.csv").read_bytes()
    _edit(path, lambda r: r.append(dict(r[1])))
    failed = run()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "data/predictions/test.csv: row 4, column 'Master_Index': duplicate id 'ID_1'" in failed.stderr
    assert (workspace / "submissions/submission.csv").read_bytes() == good


def test_an_empty_generation_becomes_the_prompt_echo_and_is_counted(tmp_path):
    path = _predictions_file(tmp_path, ["Answer: one.", "", "  ...  "])
    submission, replaced = build_submission(ROWS, read_predictions(path, ROWS))
    assert replaced == 2
    assert submission[0] == ["ID_0", "answer one"]
    assert submission[1] == ["ID_1", prompt_echo(ROWS[1])] and submission[1][1].startswith("case 1 fever cough")


def test_a_submission_holds_no_replacement_character(tmp_path):
    """U+FFFD (bytes a decoder could not make a character of) is not the model's text: a prediction
    file that holds one (made before answers were tidied) still gives a clean submission."""
    path = _predictions_file(tmp_path, ["Fever\ufffd and cough\ufffd", "\ufffd", "Refer."])
    submission, replaced = build_submission(ROWS, read_predictions(path, ROWS))
    assert [text for _, text in submission] == ["fever and cough", prompt_echo(ROWS[1]), "refer"] and replaced == 1


def test_write_submission_checks_ids_and_text(tmp_path):
    out = tmp_path / "submission.csv"
    good = [[r["Master_Index"], "text"] for r in ROWS]
    write_submission(out, ROWS, good)
    assert out.read_text().splitlines()[0] == "Master_Index,Clinician"
    for bad, message in (
        (good[:2], "missing \\['ID_2'\\]"),
        (good + [good[0]], "1 duplicated"),
        ([good[0], good[1], ["ID_2", " "]], "empty response for id 'ID_2'"),
    ):
        with pytest.raises(DataError, match=message):
            write_submission(out, ROWS, bad)
    assert out.read_text().count("\n") == 4  # the good file is still there, whole


def test_texts_with_any_line_ends_and_control_characters_round_trip(tmp_path):
    # Found on the GPU: a response with a bare "\r" (which csv.writer leaves unquoted) split its row.
    texts = ["first line\rsecond, quoted \"x\"", "a\r\nb\nc", "escape \x1b and \x14 kept"]
    path = tmp_path / "val.csv"
    write_predictions(path, ROWS, [Prediction(t, 5, True) for t in texts])
    read = read_predictions(path, ROWS)
    assert [read[r["Master_Index"]].text for r in ROWS] == [
        "first line\nsecond, quoted \"x\"", "a\nb\nc", "escape \x1b and \x14 kept"]
