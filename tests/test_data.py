import csv
import os
import subprocess
import sys

import pytest

from core.data import DataError, read_vignettes, split_train_val
from core.metrics.echo import prompt_echo, strip_nurse_intro
from core.metrics.rouge import normalise
from tests.checkpoints import REPO

TRAIN = REPO / "data" / "sample" / "train.csv"
TEST = REPO / "data" / "sample" / "test.csv"


def rows_of(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows, fieldnames=None, delimiter=","):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_sample_files_meet_the_contract():
    train = read_vignettes(TRAIN, labelled=True)
    test = read_vignettes(TEST, labelled=False)
    assert len(train) >= 60 and len(test) >= 8
    assert not {r["Master_Index"] for r in train} & {r["Master_Index"] for r in test}
    assert sum(1 for r in test if not r["Years of Experience"]) >= 1  # optional fields really are optional


def test_sample_behaves_like_the_real_rows_and_is_regenerated_byte_for_byte(tmp_path):
    """The sample's purpose (data/sample/README.md): every path of the pipeline, at least 30
    validation rows to choose an answer length on, and answers that restate the case, so the
    prompt echo scores about as on real rows (0.31)."""
    import importlib.util

    import yaml

    from core.metrics.rouge import rouge

    rows = read_vignettes(TRAIN, labelled=True)
    data = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    train, val = split_train_val(rows, data["val_fraction"], seed=data["seed"])  # params.yaml's data settings
    assert len(val) >= 30 and len(train) >= 30
    echo = rouge([prompt_echo(r) for r in val], [r["Clinician"] for r in val])["rougeL"]
    assert 0.25 < echo < 0.35, echo
    assert sum(normalise(r["Clinician"]).startswith("summary") for r in rows) / len(rows) > 0.9
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "data" / "sample" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main(tmp_path)
    assert (tmp_path / "train.csv").read_bytes() == TRAIN.read_bytes()
    assert (tmp_path / "test.csv").read_bytes() == TEST.read_bytes()


# Each case: how to damage the sample train file, and what the error must say.
def _drop_column(rows, path):
    write_csv(path, [{k: v for k, v in r.items() if k != "Prompt"} for r in rows])


def _duplicate_id(rows, path):
    rows[5]["Master_Index"] = rows[2]["Master_Index"]
    write_csv(path, rows)


def _empty_prompt(rows, path):
    rows[3]["Prompt"] = "   "
    write_csv(path, rows)


def _bad_encoding(rows, path):
    write_csv(path, rows)
    data = path.read_bytes()
    cut = data.index(b"\n", 2000)
    path.write_bytes(data[:cut] + "\nCaf\xe9".encode("latin-1") + data[cut:])


def _semicolons(rows, path):
    write_csv(path, rows, delimiter=";")


def _empty_file(rows, path):
    path.write_bytes(b"")


def _empty_target(rows, path):
    rows[7]["Clinician"] = ""
    write_csv(path, rows)


def _bad_years(rows, path):
    rows[1]["Years of Experience"] = "ten"
    write_csv(path, rows)


def _id_with_a_line_break(rows, path):
    rows[2]["Master_Index"] = "ID_A\nID_B"
    write_csv(path, rows)


BAD_INPUTS = {
    "missing column": (_drop_column, r"column 'Prompt' is missing"),
    "line break in an id": (
        _id_with_a_line_break,
        r"row 3, column 'Master_Index': the id 'ID_A\\nID_B' holds a line break",
    ),
    "duplicate id": (_duplicate_id, r"row 6, column 'Master_Index': duplicate id '.*' \(first seen in row 3\)"),
    "empty prompt": (_empty_prompt, r"row 4, column 'Prompt': empty prompt"),
    "unreadable encoding": (_bad_encoding, r"line \d+: not valid UTF-8"),
    "wrong delimiter": (_semicolons, r"separated by ';', not commas"),
    "empty file": (_empty_file, r"the file is empty"),
    "empty target": (_empty_target, r"row 8, column 'Clinician': empty clinician response"),
    "bad years": (_bad_years, r"row 2, column 'Years of Experience': expected a number"),
}


@pytest.mark.faults
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_csv_gets_a_clear_error(tmp_path, case):
    damage, message = BAD_INPUTS[case]
    path = tmp_path / "train.csv"
    damage(rows_of(TRAIN), path)
    with pytest.raises(DataError, match=message) as err:
        read_vignettes(path, labelled=True)
    assert str(err.value).startswith(str(path))


@pytest.mark.faults
@pytest.mark.parametrize("case", ["duplicate id", "wrong delimiter", "empty file"])
def test_prepare_stage_refuses_bad_input_and_keeps_earlier_output(workspace, case):
    env = {**os.environ, "PYTHONPATH": str(workspace)}

    def run():
        return subprocess.run(
            [sys.executable, "-m", "stages.prepare"], cwd=workspace, env=env, capture_output=True, text=True
        )

    first = run()
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (workspace / "data" / "prepared").iterdir()}

    damage, message = BAD_INPUTS[case]
    damage(rows_of(TRAIN), workspace / "data" / "sample" / "train.csv")
    second = run()
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert "data/sample/train.csv" in second.stderr
    after = {p.name: p.read_bytes() for p in (workspace / "data" / "prepared").iterdir()}
    assert after == before  # nothing lost, nothing half-written, no temporary left behind


def test_split_is_seeded_stratified_and_disjoint():
    rows = read_vignettes(TRAIN, labelled=True)
    train, val = split_train_val(rows, 0.2, seed=42)
    again_train, again_val = split_train_val(rows, 0.2, seed=42)
    other_train, other_val = split_train_val(rows, 0.2, seed=7)
    ids = lambda part: [r["Master_Index"] for r in part]  # noqa: E731
    assert ids(train) == ids(again_train) and ids(val) == ids(again_val)
    assert set(ids(val)) != set(ids(other_val))
    assert not set(ids(train)) & set(ids(val)) and len(train) + len(val) == len(rows)
    panels = lambda part: {" ".join(r["Clinical Panel"].upper().split()) for r in part}  # noqa: E731
    assert panels(val) == panels(rows)  # every panel (all have 2+ rows) is in validation
    assert 0.15 < len(val) / len(rows) < 0.3
    everything, none = split_train_val(rows, 0.0, seed=42)  # a final run on every labelled row
    assert ids(everything) == ids(rows) and none == []


def test_normalise_matches_the_host():
    text = "Summary: 24yr G2P1,\n\nBP 168/112 mmHg!  Mgmt — “urgent”.\r\nDx: PET"
    assert normalise(text) == "summary 24yr g2p1 bp 168112 mmhg mgmt urgent dx pet"


def test_prompt_echo_drops_the_nurse_introduction():
    long = (
        "I am a nurse with 12 years of experience in General nursing working in a Health Centres in Kiambu county in "
        "Kenya. A 2 year old with fever."
    )
    short = "i am a nurse working in a Dispensaries and Private Clinics in Nairobi county in kenya\nChild, 3, cough?"
    assert strip_nurse_intro(long) == "A 2 year old with fever."
    assert strip_nurse_intro(short) == "Child, 3, cough?"
    assert strip_nurse_intro("A woman, 30, bleeding.") == "A woman, 30, bleeding."
    assert prompt_echo({"Prompt": long}) == "a 2 year old with fever"


def test_k_folds_hold_out_every_labelled_row_once_each_panel_spread_over_the_folds():
    from collections import Counter

    from core.data import panel_of, split_fold

    rows = read_vignettes(TRAIN, labelled=True)
    held_out = []
    for fold in range(5):
        train, val = split_fold(rows, 5, fold, seed=42)
        assert len(train) + len(val) == len(rows) and not {r["Master_Index"] for r in train} & {
            r["Master_Index"] for r in val
        }
        held_out += [r["Master_Index"] for r in val]
        assert len(val) in (len(rows) // 5, len(rows) // 5 + 1)  # fold sizes differ by one row at most
        assert split_fold(rows, 5, fold, seed=42) == (train, val)  # seeded: the same folds every time
    assert sorted(held_out) == sorted(r["Master_Index"] for r in rows)  # every row validated exactly once
    # stratified: each panel's rows spread over the folds as evenly as its size allows
    for panel, count in Counter(panel_of(r) for r in rows).items():
        per_fold = [sum(panel_of(r) == panel for r in split_fold(rows, 5, k, 42)[1]) for k in range(5)]
        assert max(per_fold) - min(per_fold) <= 1, (panel, count, per_fold)
    assert split_fold(rows, 5, 0, seed=1) != split_fold(rows, 5, 0, seed=42)
