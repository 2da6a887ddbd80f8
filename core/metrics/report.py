"""The validation report: the model's ROUGE beside two trivial answers on the same rows (the prompt
echo, and the answer prefix alone: what the answer would be had the model written no token), the
model's contribution over each, overall and by clinical panel, with the share of answers that loop.
"""

from __future__ import annotations

from core.data import ID, TARGET, panel_of
from core.metrics.echo import answer_prefix, prompt_echo
from core.metrics.loops import loop_share
from core.metrics.rouge import normalise, rouge
from core.predictions import Prediction


def validation_report(
    rows: list[dict], predictions: dict[str, Prediction], prefix_kind: str = "none"
) -> tuple[dict, list[dict]]:
    """Scores of the model, the prompt echo and the answer prefix alone (`generation.answer_prefix`:
    `prefix_kind`) on the same rows: overall (a dict for `dvc metrics`) and per clinical panel (one
    record a panel, for a plot). `model_minus_prefix` is what the model's own tokens add."""
    references = [row[TARGET] for row in rows]
    answers = [predictions[row[ID]] for row in rows]
    model = [p.text for p in answers]
    baselines = {
        "prompt_echo": [prompt_echo(row) for row in rows],
        "answer_prefix": [answer_prefix(row, prefix_kind) for row in rows],
    }
    scores = {"model": rouge(model, references)} | {name: rouge(texts, references) for name, texts in baselines.items()}
    summary = {
        "rows": len(rows),
        "model": scores["model"],
        "prompt_echo": scores["prompt_echo"],
        "answer_prefix": {"kind": prefix_kind, **scores["answer_prefix"]},
        "model_minus_prefix": {"rougeL": scores["model"]["rougeL"] - scores["answer_prefix"]["rougeL"]},
        "model_minus_echo": {"rougeL": scores["model"]["rougeL"] - scores["prompt_echo"]["rougeL"]},
        # the tokens the model wrote after the prefix: none in every answer means the prefix is the answer
        "model_tokens": {
            "mean": sum(p.new_tokens for p in answers) / max(len(rows), 1),
            "answers_without": sum(p.new_tokens == 0 for p in answers),
        },
        # answers that repeat a run of words (core.metrics.loops.has_loop): the model's, and the clinicians' for scale
        "loop_share": {"model": loop_share(model), "reference": loop_share(references)},
        "empty_responses": sum(not normalise(t) for t in model),
        "cut_at_max_new_tokens": sum(not p.stopped for p in answers),
        "mean_chars": {
            "model": sum(len(t) for t in model) / max(len(rows), 1),
            "reference": sum(len(t) for t in references) / max(len(rows), 1),
        },
    }
    per_panel = []
    for panel in sorted({panel_of(row) for row in rows}):
        index = [i for i, row in enumerate(rows) if panel_of(row) == panel]
        record = {"panel": panel, "rows": len(index)}
        for system, texts in (("model", model), *baselines.items()):
            panel_scores = rouge([texts[i] for i in index], [references[i] for i in index])
            record.update({f"{system}_{name}": value for name, value in panel_scores.items()})
        per_panel.append(record)
    return summary, per_panel
