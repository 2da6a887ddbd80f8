"""The answer-only repetition rules (core/decode/repetition.py and the export's NumPy copy), the loop
measure, the answer length chosen on validation and the answer prefix, on hand-made inputs."""

import numpy as np
import pytest
import torch

from core.config import parse_params
from core.decode.length import choose_length, cut
from core.decode.repetition import AnswerOnlyRepetition, repeated_ngram_bans
from core.decode.results import Generations
from core.export.runtime import answer_only_rules as numpy_rules
from core.metrics.echo import answer_prefix
from core.metrics.loops import has_loop, loop_share
from core.prompts import join_answer

VOCAB = 8


def scores(*values):
    return torch.tensor([list(values)], dtype=torch.float32)


def test_penalty_changes_answer_tokens_only_and_leaves_prompt_tokens_as_they_were():
    # prompt: tokens 1 2 3 (columns 0-2); answer so far: tokens 3 4 (columns 3-4)
    ids = torch.tensor([[1, 2, 3, 3, 4]])
    logits = scores(0.0, 2.0, 2.0, 2.0, -2.0, 1.0, 0.5, 0.0)
    out = AnswerOnlyRepetition([3], penalty=2.0, ngram_size=0)(ids, logits.clone())
    # token 3 (in both): 2.0 / 2 = 1.0; token 4 (answer, negative): -2.0 * 2 = -4.0
    assert out.tolist() == [[0.0, 2.0, 2.0, 1.0, -4.0, 1.0, 0.5, 0.0]]
    # tokens 1 and 2 only in the prompt: untouched (transformers' own penalty would have halved them)
    from transformers import RepetitionPenaltyLogitsProcessor

    everything = RepetitionPenaltyLogitsProcessor(2.0)(ids, logits.clone())
    assert everything[0, 1].item() == 1.0 and out[0, 1].item() == 2.0


def test_no_repeat_ngram_bans_a_repeated_answer_ngram_but_not_one_copied_from_the_prompt():
    # the prompt holds 5 6 7; the answer copies 5 6 and so may write 7: restating is free
    ids = torch.tensor([[5, 6, 7, 1, 5, 6]])
    out = AnswerOnlyRepetition([3], penalty=1.0, ngram_size=3)(ids, torch.zeros((1, VOCAB)))
    assert torch.isfinite(out).all()
    # the answer 5 6 7 1 5 6 holds "5 6 7" already: writing 7 again would repeat it
    ids = torch.tensor([[0, 0, 5, 6, 7, 1, 5, 6]])
    out = AnswerOnlyRepetition([2], penalty=1.0, ngram_size=3)(ids, torch.zeros((1, VOCAB)))
    assert torch.isinf(out[0]).nonzero().view(-1).tolist() == [7]
    # transformers' own rule bans 7 in the first case too: it counts the prompt
    from transformers import NoRepeatNGramLogitsProcessor

    assert torch.isinf(
        NoRepeatNGramLogitsProcessor(3)(torch.tensor([[5, 6, 7, 1, 5, 6]]), torch.zeros((1, VOCAB)))
    ).any()


def test_rules_follow_each_rows_answer_start_and_expand_over_beams():
    # two prompt rows of one left-padded batch, two beams each; row 0's answer starts at column 2, row 1's at 4
    ids = torch.tensor([[3, 4, 3, 4, 3, 4], [3, 4, 3, 4, 1, 2], [3, 4, 3, 4, 3, 4], [1, 1, 1, 1, 1, 2]])
    out = AnswerOnlyRepetition([2, 4], penalty=1.0, ngram_size=2)(ids, torch.zeros((4, VOCAB)))
    banned = [torch.isinf(row).nonzero().view(-1).tolist() for row in out]
    # row 0 (answer 3 4 3 4): after 4, "4 3" exists -> 3 banned. Row 1's beams: answer "3 4" (beam 3) or "1 2".
    assert banned == [[3], [], [], []]


def test_ngram_bans_use_only_written_columns_of_a_fixed_history():
    """The CUDA-graph path's form: a fixed buffer, a length that may be a tensor."""
    history = torch.tensor([[1, 2, 3, 1, 2, 7, 7, 7]])  # 5 written, then leftovers
    assert repeated_ngram_bans(history, torch.tensor(5), 3, VOCAB).nonzero()[:, 1].tolist() == [3]
    assert not repeated_ngram_bans(history, 4, 3, VOCAB).any()  # "2" after "1": no 3-gram to complete yet
    assert repeated_ngram_bans(history, 3, 1, VOCAB).nonzero()[:, 1].tolist() == [1, 2, 3]


def test_the_exports_numpy_rules_agree_with_the_torch_rules():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        answer = torch.randint(0, 4, (1, 12), generator=generator)
        logits = torch.randn((1, VOCAB), generator=generator)
        expected = AnswerOnlyRepetition([0], penalty=1.3, ngram_size=3)(answer, logits.clone())
        got = numpy_rules(logits.numpy(), [answer[0].tolist()], 1.3, 3)
        assert np.allclose(got, expected.numpy())


def test_a_loop_is_a_repeated_run_of_six_words():
    looping = "give oxygen and monitor the patient closely give oxygen and monitor the patient closely"
    assert has_loop(looping)
    assert not has_loop("give oxygen and monitor the patient closely then refer to the county hospital")
    assert not has_loop("refer refer refer refer refer")  # five words: under the run length
    assert (
        loop_share([looping, "fine", "Give oxygen, and monitor the patient! Give oxygen and monitor the patient"])
        == 2 / 3
    )


def generations(token_ids, texts=None, prefixes=None):
    texts = texts or [" ".join(f"w{t}" for t in ids) for ids in token_ids]
    return Generations(
        texts, [len(i) for i in token_ids], [True] * len(token_ids), 1.0, token_ids=token_ids, prefixes=prefixes or []
    )


def decode(ids):
    return " ".join(f"w{t}" for t in ids)


def test_the_length_choice_picks_the_grid_length_the_validation_rows_favour(repo_params):
    # two answers of 8 tokens; the references are their first 4 tokens: a cut at 4 matches exactly
    answers = generations([[1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7, 8, 9]])
    references = ["w1 w2 w3 w4", "w2 w3 w4 w5"]
    g = parse_params(repo_params).profile.generation
    import dataclasses

    g = dataclasses.replace(g, length_grid=[2, 4, 8], answer_prefix="none", max_new_tokens=8)
    choice = choose_length(answers, references, g, decode)
    assert choice.max_new_tokens == 4 and choice.chosen_by == "validation ROUGE-L"
    assert choice.rougeL_by_length[4] == 1.0 and choice.rougeL_by_length[2] < 1 and choice.rougeL_by_length[8] < 1
    # references as long as the answers: the longest cut wins
    assert choose_length(answers, [decode(i) for i in answers.token_ids], g, decode).max_new_tokens == 8
    # no validation rows, or no grid: params' max_new_tokens, and the record says why
    assert choose_length(generations([]), [], g, decode).chosen_by.startswith("params: no validation rows")
    empty = dataclasses.replace(g, length_grid=[])
    assert choose_length(answers, references, empty, decode).max_new_tokens == 8
    # a cut answer is cut: fewer tokens, not stopped; a shorter one stays as it was
    cut_answers = cut(answers, 4, decode)
    assert [p.text for p in cut_answers] == references and [p.stopped for p in cut_answers] == [False, False]
    assert cut(generations([[1, 2]]), 4, decode)[0].stopped


def test_an_echo_prefix_leads_every_answer_and_a_zero_cut_keeps_it_alone():
    row = {
        "Prompt": "I am a nurse with 5 years of experience in Kiambu county in Kenya. A child, 2 years, has a fever."
    }
    prefix = answer_prefix(row, "echo")
    assert prefix == "summary a child 2 years has a fever" and answer_prefix(row, "none") == ""
    answers = generations([[1, 2, 3]], texts=[join_answer(prefix, "w1 w2 w3")], prefixes=[prefix])
    assert [p.text for p in cut(answers, 0, decode)] == [prefix]
    assert [p.text for p in cut(answers, 2, decode)] == [prefix + " w1 w2"]


def test_a_zero_length_without_a_prefix_is_refused(repo_params):
    import copy

    from core.config import ConfigError

    raw = copy.deepcopy(repo_params)
    raw["models"]["smollm2"]["generation"].update(answer_prefix="none")
    with pytest.raises(ConfigError, match=r"length_grid: 0 \(none of the model's tokens\) leaves an empty answer"):
        parse_params(raw)
    raw["models"]["smollm2"]["generation"].update(answer_prefix="echo", length_grid=[5, -1])
    with pytest.raises(ConfigError, match=r"length_grid\[1\]: expected at least 0, got -1"):
        parse_params(raw)
