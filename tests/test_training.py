"""Fine-tuning records and limits: over-long rows, a resumed run's log and clock, the DVCLive log."""

import csv
import dataclasses

import pytest

from core import atomic
from core.models.base import BaseUnslothModel
from core.models.families import model_for
from core.train.common import CLOCK_FILE, IGNORE_INDEX, fit_example, write_training_log
from core.train.sft import fine_tune, training_examples
from tests.conftest import tiny_params
from tests.test_model import ROWS


def test_fit_example_keeps_the_answer_and_cuts_the_middle_of_the_prompt():
    prompt, answer = list(range(100, 110)), [1, 2, 3]  # 10 prompt tokens, answer + end of turn = 3
    assert fit_example(prompt, answer, 13) == prompt  # fits exactly: untouched
    # 2 tokens over: 10 - 2 = 8 prompt tokens stay, 4 from the start and 4 from the end
    assert fit_example(prompt, answer, 11) == [100, 101, 102, 103, 106, 107, 108, 109]
    assert fit_example(prompt, answer, 6) == [100, 108, 109]  # room 3: 1 from the start, 2 from the end
    # an answer that leaves less than a quarter of the window to the prompt: the row is dropped
    assert fit_example(prompt, list(range(9)), 11) == [100, 109]  # room 2 = 11 // 4: still kept
    assert fit_example(prompt, list(range(10)), 11) is None  # room 1
    assert fit_example(prompt, list(range(12)), 11) is None  # the answer alone is too long


@pytest.fixture
def tiny_qwen(repo_params, toy_checkpoints):
    params = tiny_params(repo_params, "qwen3", toy_checkpoints["qwen3"])
    yield params
    BaseUnslothModel.clear_cache()


def test_an_over_long_row_is_trained_on_with_its_whole_answer_or_dropped(tiny_qwen, caplog):
    row = ROWS[1]
    short = dict(row, Master_Index="ID_SHORT", Clinician="Refer to the district hospital.")
    long = dict(row, Master_Index="ID_LONG", Clinician=row["Clinician"] * 20)  # the answer alone overflows
    probe = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    full_prompt = probe.encode(probe.prompt_for(row))
    answer = probe.encode(row["Clinician"].strip() + probe.end_of_turn)
    window = len(full_prompt) + len(answer) - 5  # row is 5 tokens too long; short fits

    model = model_for(tiny_qwen.profile.with_base(max_seq_length=window), tiny_qwen.prompt.system)
    examples = training_examples(model, [short, row, long])
    assert examples.prompt_cut == [row["Master_Index"]] and examples.dropped == ["ID_LONG"]
    assert len(examples.input_ids) == 2 and len(examples.input_ids[0]) < window  # short: untouched
    cut, labels = examples.input_ids[1], examples.labels[1]
    assert len(cut) == window and cut[-len(answer) :] == answer  # the answer and its end-of-turn token, whole
    assert labels == [IGNORE_INDEX] * (window - len(answer)) + answer  # only the answer is learned
    prompt_part = cut[: window - len(answer)]
    assert prompt_part[:20] == full_prompt[:20] and prompt_part[-20:] == full_prompt[-20:]  # start and question kept
    assert (
        f"1 of 3 rows are longer than max_seq_length={window}: trained on with the middle of the prompt cut, "
        f"the answer whole ({row['Master_Index']})" in caplog.text
    )
    assert (
        "1 of 3 rows left out: the answer alone leaves less than a quarter" in caplog.text and "ID_LONG" in caplog.text
    )
    model.cleanup_model()


class StopAfter:
    """A trainer callback that kills the run at a step, as a Ctrl-C would."""

    def __init__(self, step):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        self.callback = Stop()


def test_a_resumed_run_logs_continuous_steps_and_times_the_whole_run(tiny_qwen, tmp_path):
    training = dataclasses.replace(tiny_qwen.profile.training, max_steps=5, save_steps=2, logging_steps=1)
    run_dir = tmp_path / "run"
    first = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    with pytest.raises(KeyboardInterrupt):  # killed at step 3: checkpoint-2 is the last one saved
        fine_tune(first, ROWS[:8], ROWS[8:10], training, run_dir, callbacks=[StopAfter(3).callback])
    first.cleanup_model()
    BaseUnslothModel.clear_cache()
    before_resume = atomic.read_json(run_dir / "checkpoint-2" / CLOCK_FILE)
    assert before_resume["step"] == 2 and before_resume["seconds"] > 0

    again = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    metrics = fine_tune(again, ROWS[:8], ROWS[8:10], training, run_dir)
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 5
    assert metrics["train_runtime_s"] > before_resume["seconds"]  # the first part counted too
    loss_steps = [entry["step"] for entry in again.training_log if "loss" in entry]
    assert loss_steps == [1, 2, 3, 4, 5]  # step 3 of the killed run is not there twice

    write_training_log(tmp_path / "live", again.training_log)
    with open(tmp_path / "live" / "plots" / "metrics" / "loss.tsv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")] == [1, 2, 3, 4, 5]
    assert (tmp_path / "live" / "plots" / "metrics" / "eval" / "loss.tsv").exists()
    assert atomic.read_json(tmp_path / "live" / "metrics.json")["step"] == 5
    again.cleanup_model()


def test_a_default_run_checkpoints_each_epoch_resumes_and_leaves_no_empty_directory(tiny_qwen, tmp_path):
    """params.yaml's default (`save_steps: epoch`): a checkpoint at each epoch's end, so that a default run, whatever
    its few steps, can resume; a run stopped before its first checkpoint leaves no directory behind."""
    training = dataclasses.replace(tiny_qwen.profile.training, epochs=2, max_steps=-1, logging_steps=1)
    assert training.save_steps == "epoch"  # the repository's default, not set by this test
    run_dir = tmp_path / "run"
    early = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    with pytest.raises(KeyboardInterrupt):  # 8 rows, 4 a step: 2 steps an epoch; stopped in the first
        fine_tune(early, ROWS[:8], ROWS[8:10], training, run_dir, callbacks=[StopAfter(1).callback])
    early.cleanup_model()
    assert not run_dir.exists()
    first = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    with pytest.raises(KeyboardInterrupt):  # stopped in the second epoch: the first epoch's checkpoint is there
        fine_tune(first, ROWS[:8], ROWS[8:10], training, run_dir, callbacks=[StopAfter(3).callback])
    first.cleanup_model()
    BaseUnslothModel.clear_cache()
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    again = model_for(tiny_qwen.profile, tiny_qwen.prompt.system)
    metrics = fine_tune(again, ROWS[:8], ROWS[8:10], training, run_dir)
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    again.cleanup_model()


def test_the_best_epochs_weights_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A crash while the best weights are written leaves the last good file for a resumed run
    (a bare torch.save would leave half a file that the resumed run cannot load)."""
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from core.train.common import BEST_FILE, best_epoch

    model = torch.nn.Linear(2, 2)
    state = TrainerState(epoch=1, global_step=4)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    best_epoch(model, tmp_path, 0).on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 2.0})
    good = (tmp_path / BEST_FILE).read_bytes()
    save = torch.save

    def crash_midway(obj, f, *a, **k):
        save(obj, f, *a, **k)
        with open(f, "r+b") as half:
            half.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    state.global_step = 8
    with pytest.raises(KeyboardInterrupt):
        best_epoch(model, tmp_path, 0).on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 1.0})
    assert (tmp_path / BEST_FILE).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name != "out"] == [BEST_FILE]  # no temporary left behind
