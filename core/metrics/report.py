"""The validation report: the model's ROUGE beside the prompt echo's on the same rows, overall
and by clinical panel, with the share of answers that loop.
"""
from __future__ import annotations

from core.data import ID, TARGET, panel_of
from core.metrics.echo import prompt_echo
from core.metrics.loops import loop_share
from core.metrics.rouge import normalise, rouge
from core.predictions import Prediction


def validation_report(rows: list[dict], predictions: dict[str, Prediction]) -> tuple[dict, list[dict]]:
    """Scores of the model and of the prompt-echo baseline on the same rows: overall (a dict
    for `dvc metrics`) and per clinical panel (one record a panel, for a plot)."""
    references = [row[TARGET] for row in rows]
    model = [predictions[row[ID]].text for row in rows]
    echo = [prompt_echo(row) for row in rows]
    summary = {
        "rows": len(rows),
        "model": rouge(model, references),
        "prompt_echo": rouge(echo, references),
        # answers that repeat a run of words (core.metrics.loops.has_loop): the model's, and the clinicians' for scale
        "loop_share": {"model": loop_share(model), "reference": loop_share(references)},
        "empty_responses": sum(not normalise(t) for t in model),
        "cut_at_max_new_tokens": sum(not predictions[row[ID]].stopped for row in rows),
        "mean_chars": {
            "model": sum(len(t) for t in model) / max(len(rows), 1),
            "reference": sum(len(t) for t in references) / max(len(rows), 1),
        },
    }
    per_panel = []
    for panel in sorted({panel_of(row) for row in rows}):
        index = [i for i, row in enumerate(rows) if panel_of(row) == panel]
        record = {"panel": panel, "rows": len(index)}
        for system, texts in (("model", model), ("prompt_echo", echo)):
            scores = rouge([texts[i] for i in index], [references[i] for i in index])
            record.update({f"{system}_{name}": value for name, value in scores.items()})
        per_panel.append(record)
    return summary, per_panel
