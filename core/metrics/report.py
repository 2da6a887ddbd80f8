"""The validation report: the model's ROUGE beside two trivial answers on the same rows (the prompt
echo, and the answer prefix alone: what the answer would be had the model written no token), the
model's contribution over each, overall and by clinical panel, with the share of answers that loop.
Every overall score carries its 95 % interval and each contribution its paired interval, from a seeded
bootstrap over the rows (core/metrics/uncertainty.py): on 31 to 80 validation rows a difference of 0.01
is often within them.
"""

from __future__ import annotations

from typing import NamedTuple

from core.data import ID, TARGET, panel_of
from core.metrics import uncertainty
from core.metrics.echo import answer_prefix, prompt_echo
from core.metrics.loops import loop_share
from core.metrics.rouge import normalise, rouge, rouge_by_row
from core.predictions import Prediction


class ValidationReport(NamedTuple):
    summary: dict  # overall, for `dvc metrics`
    per_panel: list[dict]  # one record a clinical panel, for a plot
    # one record a validation row: its id, panel and each system's ROUGE-L, for pairing runs on the same
    # rows (notebooks/compare.py) and pooling cross-validation folds
    per_row: list[dict]


SYSTEMS = ("model", "answer_prefix", "prompt_echo")


def validation_report(
    rows: list[dict], predictions: dict[str, Prediction], prefix_kind: str = "none"
) -> ValidationReport:
    """Scores of the model, the prompt echo and the answer prefix alone (`generation.answer_prefix`:
    `prefix_kind`) on the same rows: overall, per clinical panel and per row. `model_minus_prefix` is
    what the model's own tokens add."""
    references = [row[TARGET] for row in rows]
    answers = [predictions[row[ID]] for row in rows]
    model = [p.text for p in answers]
    baselines = {
        "prompt_echo": [prompt_echo(row) for row in rows],
        "answer_prefix": [answer_prefix(row, prefix_kind) for row in rows],
    }
    by_row = {name: rouge_by_row(texts, references) for name, texts in {"model": model, **baselines}.items()}
    scores = {name: _means(found, len(rows)) for name, found in by_row.items()}
    summary = {
        "rows": len(rows),
        **_with_intervals(by_row, scores),
        "bootstrap": {"resamples": uncertainty.RESAMPLES, "seed": uncertainty.SEED, "level": uncertainty.LEVEL},
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
    summary["answer_prefix"]["kind"] = prefix_kind
    per_panel = []
    for panel in sorted({panel_of(row) for row in rows}):
        index = [i for i, row in enumerate(rows) if panel_of(row) == panel]
        record = {"panel": panel, "rows": len(index)}
        for system, texts in (("model", model), *baselines.items()):
            panel_scores = rouge([texts[i] for i in index], [references[i] for i in index])
            record.update({f"{system}_{name}": value for name, value in panel_scores.items()})
        per_panel.append(record)
    per_row = [
        {"id": row[ID], "panel": panel_of(row), **{name: by_row[name]["rougeL"][i] for name in SYSTEMS}}
        for i, row in enumerate(rows)
    ]
    return ValidationReport(summary, per_panel, per_row)


def _means(by_row: dict[str, list[float]], rows: int) -> dict[str, float]:
    return {kind: sum(values) / max(rows, 1) for kind, values in by_row.items()}


# the model's contribution over each trivial answer: (what it is called, the baseline)
DIFFERENCES = (("model_minus_prefix", "answer_prefix"), ("model_minus_echo", "prompt_echo"))


def _with_intervals(by_row: dict[str, dict[str, list[float]]], scores: dict[str, dict[str, float]]) -> dict:
    """Each system's means with their 95 % intervals (`rougeL_low`, `rougeL_high`), and the model's ROUGE-L
    minus each baseline's with the paired interval and the share of resamples above 0."""
    spread = uncertainty.bootstrap(
        {f"{name}.{kind}": values for name, found in by_row.items() for kind, values in found.items()},
        {name: ("model.rougeL", f"{baseline}.rougeL") for name, baseline in DIFFERENCES},
    )
    found = {}
    for name, means in scores.items():
        found[name] = dict(means)
        for kind in means:
            found[name].update({f"{kind}_{end}": value for end, value in spread.get(f"{name}.{kind}", {}).items()})
    for name, baseline in DIFFERENCES:
        found[name] = {"rougeL": scores["model"]["rougeL"] - scores[baseline]["rougeL"]}
        found[name].update({f"rougeL_{key}": value for key, value in spread.get(name, {}).items()})
    return found
