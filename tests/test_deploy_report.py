"""The deploy report's ROUGE-L comparison of the export with PyTorch (stages/deploy.py): on the submitted
answers where the model wrote in them, else on predict's uncut answers, and never a pass for comparing the
answer prefix with itself. No model runs here: the export's answers are given as `stages.ask` reports them."""

import pytest

from core.config import parse_params
from core.data import ID, TARGET, read_vignettes
from core.metrics.echo import prompt_echo
from core.paths import read_table
from core.predictions import Prediction, write_predictions
from stages import deploy
from tests.checkpoints import REPO

INFO = {"precision": "int8"}


@pytest.fixture
def rows():
    return read_vignettes(REPO / "data/sample/train.csv", labelled=True)[:20]


@pytest.fixture
def paths(tmp_path):
    return read_table().under(tmp_path)


@pytest.fixture
def device(paths, repo_params):
    return deploy.Device(paths, parse_params(repo_params).profile.generation)


def export_answers(texts: list[str], new_tokens: list[int]) -> dict:
    return {"texts": texts, "new_tokens": new_tokens, "row_seconds": [1.0] * len(texts), "peak_rss_mb": 100.0}


def base_report() -> dict:
    return {"parameters": 1, "peak_rss_mb": 100.0, "ms_per_vignette": {"median": 10.0}}


def write_torch(path: str, rows: list[dict], texts: list[str], new_tokens: int) -> None:
    write_predictions(path, rows, [Prediction(text, new_tokens, True) for text in texts])


def test_submitted_answers_with_model_tokens_are_compared_on_every_row(rows, paths, device):
    answers = [row[TARGET] for row in rows]
    write_torch(paths.val_predictions, rows, answers, 5)
    submitted = export_answers([prompt_echo(row) for row in rows], [5] * len(rows))
    compared = deploy.compared_answers(
        device, rows, (10, submitted), (32, export_answers([], [])), longest=40, engine="torch"
    )
    assert (
        compared["answers"] == "submitted" and compared["rows"] == rows and compared["torch"] == paths.val_predictions
    )

    report = base_report()
    limits = deploy.judge(report, INFO, rows, compared)
    assert report["rougeL"]["torch"] == pytest.approx(1.0) and report["rougeL"]["export"] < 1
    assert report["rougeL"]["compared_on"] == {"answers": "submitted", "max_new_tokens": 10, "rows": len(rows)}
    assert limits["rougeL_loss"][2] is False and limits["rougeL_loss"][0] == pytest.approx(
        1.0 - report["rougeL"]["export"]
    )


def test_prefix_only_answers_are_compared_at_the_longest_length_on_predicts_uncut_answers(rows, paths, device):
    prefixes = [prompt_echo(row) for row in rows]
    # the submitted answers: the prefix alone from both engines, which used to pass with a loss of 0
    write_torch(paths.val_predictions, rows, prefixes, 0)
    # at the longest length PyTorch wrote the references; the export's timing run wrote the prefix on
    write_torch(paths.val_longest_predictions, rows, [row[TARGET] for row in rows], 40)
    part = rows[: deploy.TIMED_ROWS]
    timed = export_answers([p + " more" for p in prefixes[: len(part)]], [3] * len(part))
    submitted = export_answers(prefixes, [0] * len(rows))
    compared = deploy.compared_answers(device, rows, (0, submitted), (40, timed), longest=40, engine="torch")
    assert compared["answers"] == "uncut" and compared["rows"] == part and compared["export"] is timed

    report = base_report()
    limits = deploy.judge(report, INFO, rows, compared)
    assert report["rougeL"]["compared_on"] == {"answers": "uncut", "max_new_tokens": 40, "rows": len(part)}
    assert report["rougeL"]["torch"] == pytest.approx(1.0)  # PyTorch's uncut answers on the same rows
    assert limits["rougeL_loss"][2] is False  # a real comparison, and a real gap


def test_the_engines_are_compared_in_a_run_of_their_own_when_the_timing_ran_at_another_length(
    rows, paths, device, monkeypatch
):
    asked = []
    monkeypatch.setattr(
        deploy, "answer_rows", lambda device, part, length: asked.append((part, length)) or export_answers(["x"], [1])
    )
    submitted = export_answers([prompt_echo(row) for row in rows], [0] * len(rows))
    compared = deploy.compared_answers(
        device, rows, (0, submitted), (32, export_answers([], [])), longest=16, engine="torch"
    )
    assert asked == [(rows[: deploy.TIMED_ROWS], 16)] and compared["max_new_tokens"] == 16
    # predict answered with the export itself: no PyTorch answers to set a run beside, so none is made
    compared = deploy.compared_answers(
        device, rows, (0, submitted), (32, export_answers([], [])), longest=16, engine="onnx"
    )
    assert len(asked) == 1 and compared["answers"] == "submitted"


def test_a_comparison_where_no_engine_wrote_a_token_is_not_a_pass(rows, paths, device):
    prefixes = [prompt_echo(row) for row in rows]
    write_torch(paths.val_predictions, rows, prefixes, 0)
    submitted = export_answers(prefixes, [0] * len(rows))
    # nothing longer was generated (longest 0): only the prefix against itself is left
    compared = deploy.compared_answers(
        device, rows, (0, submitted), (32, export_answers([], [])), longest=0, engine="torch"
    )
    limits = deploy.judge(base_report(), INFO, rows, compared)
    assert limits["rougeL_loss"][0] == 0 and limits["rougeL_loss"][2] is None
    assert deploy.all_limits_pass([ok for _, _, ok in limits.values()]) is None
    assert deploy.all_limits_pass([True, False, None]) is False and deploy.all_limits_pass([True, True]) is True


def test_an_answer_id_missing_from_predicts_uncut_file_is_named(rows, paths, device):
    write_torch(paths.val_longest_predictions, rows[1:], [row[TARGET] for row in rows[1:]], 40)
    timed = export_answers(["a"] * deploy.TIMED_ROWS, [3] * deploy.TIMED_ROWS)
    compared = deploy.compared_answers(
        device, rows, (0, export_answers(["p"] * len(rows), [0] * len(rows))), (40, timed), 40, "torch"
    )
    with pytest.raises(Exception, match=rf"{paths.val_longest_predictions}.*{rows[0][ID]}"):
        deploy.judge(base_report(), INFO, rows, compared)
