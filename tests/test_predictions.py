import csv

import pytest

from core.data import DataError
from core.metrics.echo import prompt_echo
from core.metrics.report import validation_report
from core.metrics.rouge import rouge
from core.predictions import Prediction, build_submission, read_predictions, write_predictions, write_submission

ROWS = [
    {
        "Master_Index": f"ID_{i}",
        "Prompt": f"I am a nurse working in a Health Centres in Kisumu county in Kenya. Case {i}: fever, cough.",
        "Clinical Panel": panel,
        "Clinician": f"Summary: case {i}. Diagnosis: pneumonia. Management: amoxicillin.",
    }
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
    summary, per_panel, _ = validation_report(ROWS, predictions)
    assert summary["model"]["rougeL"] == pytest.approx(1.0)
    assert 0 < summary["prompt_echo"]["rougeL"] < 1
    assert [p["panel"] for p in per_panel] == ["PAEDIATRICS", "SURGERY"]  # case and spaces folded
    assert per_panel[0]["rows"] == 2
    assert {key: summary["answer_prefix"][key] for key in ("kind", "rouge1", "rouge2", "rougeL")} == {
        "kind": "none",
        "rouge1": 0.0,
        "rouge2": 0.0,
        "rougeL": 0.0,
    }
    assert summary["answer_prefix"]["rougeL_low"] == summary["answer_prefix"]["rougeL_high"] == 0.0
    assert (
        summary["model_minus_prefix"]["rougeL"] == pytest.approx(1.0)
        and summary["model_tokens"]["answers_without"] == 0
    )


def test_answers_that_are_the_prefix_alone_are_reported_as_adding_nothing():
    from core.metrics.echo import answer_prefix

    # every answer "summary" + the echo and not one model token: what validation's length 0 gives
    predictions = {r["Master_Index"]: Prediction(answer_prefix(r, "echo"), 0, False) for r in ROWS}
    summary, per_panel, _ = validation_report(ROWS, predictions, "echo")
    assert summary["answer_prefix"]["kind"] == "echo" and summary["model"] == {
        k: summary["answer_prefix"][k] for k in summary["model"]
    }
    assert summary["model_minus_prefix"]["rougeL"] == 0.0 and summary["model_tokens"] == {
        "mean": 0.0,
        "answers_without": len(ROWS),
    }
    # the prefix holds the echo and one word more: scored apart from the echo
    assert summary["answer_prefix"]["rougeL"] != summary["prompt_echo"]["rougeL"]
    assert summary["model_minus_echo"]["rougeL"] == pytest.approx(
        summary["model"]["rougeL"] - summary["prompt_echo"]["rougeL"]
    )
    assert all(panel["model_rougeL"] == panel["answer_prefix_rougeL"] for panel in per_panel)


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
        (
            lambda r: r[2].update(Clinician=""),
            r"row 3, column 'Clinician': the text is empty but predict wrote '8' characters",
        ),
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

    def run():
        return subprocess.run(
            [sys.executable, "-m", "stages.submit"], cwd=workspace, env=env, capture_output=True, text=True
        )

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
    texts = ['first line\rsecond, quoted "x"', "a\r\nb\nc", "escape \x1b and \x14 kept"]
    path = tmp_path / "val.csv"
    write_predictions(path, ROWS, [Prediction(t, 5, True) for t in texts])
    read = read_predictions(path, ROWS)
    assert [read[r["Master_Index"]].text for r in ROWS] == [
        'first line\nsecond, quoted "x"',
        "a\nb\nc",
        "escape \x1b and \x14 kept",
    ]


class CountingModel:
    """A stand-in for the fine-tuned model in predict: answers "w1 w2 ..." up to the longest length
    asked, and records every call (how many rows, up to how many tokens)."""

    def __init__(self):
        self.calls = []

    def load_adapter(self, path):
        pass

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)

    def generate_responses(self, rows, decoding):
        from core.decode.results import Generations
        from core.metrics.echo import answer_prefix
        from core.prompts import join_answer

        n = decoding.longest_answer
        self.calls.append((len(rows), n))
        prefixes = [answer_prefix(row, decoding.answer_prefix) for row in rows]
        ids = [list(range(1, n + 1)) for _ in rows]
        return Generations(
            texts=[join_answer(p, self.decode(i)) for p, i in zip(prefixes, ids, strict=True)],
            new_tokens=[n] * len(rows),
            stopped=[False] * len(rows),
            seconds=0.5,
            token_ids=ids,
            prefixes=prefixes,
        )


@pytest.mark.parametrize("best", [0, 4])
def test_predict_answers_the_test_rows_at_the_length_chosen_and_not_at_all_at_length_0(best, tmp_path, monkeypatch):
    import json

    import yaml

    import core.decode.answer
    import core.models.families
    from core import atomic
    from core.config import parse_params
    from core.metrics.echo import answer_prefix
    from core.paths import read_table
    from stages import predict
    from tests.checkpoints import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"][params["model"]]["generation"].update(
        length_grid=[0, 4, 8], max_new_tokens=8, answer_prefix="echo", engine="torch"
    )
    # clinicians who wrote the prefix and then exactly `best` of the model's words: validation must choose `best`
    val = [
        dict(row, Clinician=" ".join([answer_prefix(row, "echo"), *[f"w{i}" for i in range(1, best + 1)]]))
        for row in ROWS
    ]
    test = [
        {k: v for k, v in row.items() if k != "Clinician"} | {"Master_Index": f"T_{i}"} for i, row in enumerate(ROWS)
    ]
    atomic.write_text(tmp_path / "data/prepared/val.jsonl", "".join(json.dumps(r) + "\n" for r in val))
    atomic.write_text(tmp_path / "data/prepared/test.jsonl", "".join(json.dumps(r) + "\n" for r in test))
    model = CountingModel()
    monkeypatch.setattr(core.models.families, "model_for", lambda *args, **kwargs: model)
    monkeypatch.setattr(core.decode.answer, "generate_responses", lambda m, rows, g: m.generate_responses(rows, g))
    with atomic.Outputs() as outputs:
        predict.predict(parse_params(params), read_table().under(tmp_path), outputs)
        outputs.commit()
    report = json.loads((tmp_path / "metrics/predict.json").read_text())
    assert report["length"]["max_new_tokens"] == best
    # validation at the grid's longest; the test rows at the chosen length, or not asked at all
    assert model.calls == ([(len(val), 8), (len(test), best)] if best else [(len(val), 8)])
    answers = list(csv.DictReader(open(tmp_path / "data/predictions/test.csv", encoding="utf-8")))
    assert [a["Clinician"] for a in answers] == [
        " ".join([answer_prefix(r, "echo"), *[f"w{i}" for i in range(1, best + 1)]]) for r in test
    ]
    assert {a["new_tokens"] for a in answers} == {str(best)} and report["test"]["seconds"] == (0.5 if best else 0.0)


def test_an_answer_shown_to_a_person_keeps_the_cases_own_numbers(repo_params):
    """ask (and the notebook) show the restated case as the nurse wrote it: the host's normalisation turns
    39.8 into 398 and 5.2 g/dl into 52 gdl, which belongs to the submission file and the scores only."""
    import dataclasses

    from core.config import parse_params
    from core.metrics.echo import answer_prefix, readable_answer
    from core.metrics.rouge import normalise
    from core.prompts import join_answer
    from stages.ask import ask

    vignette = (
        "I am a nurse with 5 years of experience working in a health centre in Kisumu county in Kenya. "
        "A 2 year old boy with severe malaria: temperature 39.8, pulse 168, haemoglobin 5.2 g/dl, weight 12 kg. "
        "What is the immediate management?"
    )
    own = "give IV artesunate 2.4 mg/kg at 0, 12 and 24 h"  # the model's own text, shown as it wrote it

    class Engine:
        def answer(self, row, generation, on_text=None):
            return join_answer(answer_prefix(row, generation.answer_prefix), own), [1, 2, 3]

    generation = dataclasses.replace(parse_params(repo_params).profile.generation, answer_prefix="echo")
    shown = ask(Engine(), vignette, generation)
    assert shown == (
        "Summary: A 2 year old boy with severe malaria: temperature 39.8, pulse 168, haemoglobin 5.2 g/dl, "
        "weight 12 kg. What is the immediate management? give IV artesunate 2.4 mg/kg at 0, 12 and 24 h"
    )
    scored = join_answer(answer_prefix({"Prompt": vignette}, "echo"), own)
    assert "temperature 398" in scored and "52 gdl" in scored  # what the submission holds, as the host scores it
    assert normalise(shown) == normalise(scored)  # the same ROUGE either way
    # an answer that does not open with the prefix (answer_prefix: none) is shown as the model wrote it
    assert readable_answer({"Prompt": vignette}, own, "none") == own
