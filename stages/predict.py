"""predict: answer the validation and test splits with the fine-tuned (and aligned) adapter; the
answer length is chosen on the validation answers, then the test rows are answered at that length
(at length 0, the answer prefix alone: no model call). The validation answers are also kept as
generated, at the longest length, for the deploy stage's comparison of the export with PyTorch."""

import functools
import logging
from pathlib import Path

from core import atomic
from core.config import Params, load_params
from core.data import TARGET
from core.decode.length import choose_length, cut, for_answering, for_test, prefix_alone
from core.decode.results import Generations
from core.paths import Paths, read_table
from core.predictions import Prediction, predictions_csv
from stages import run


def log_answers(split: str, rows: list[dict], out) -> None:
    logging.info(
        "%s: %d responses in %.1f s, %.1f tokens/s, %.1f positions decoded per answer token",
        split,
        len(rows),
        out.seconds,
        out.tokens_per_second,
        out.decoding_work_ratio,
    )


def split_record(out: Generations, predictions: list[Prediction]) -> dict:
    """A split's line of metrics/predict.json: what answering it cost, and what the answers hold."""
    rows = max(len(predictions), 1)
    return {
        "rows": len(predictions),
        # seconds and tokens/s are the generation's, which ran to the grid's longest length on the
        # validation rows: the tokens it wrote beside those kept after the length cut
        "seconds": out.seconds,
        "seconds_per_row": out.seconds / rows,
        "tokens_per_s": out.tokens_per_second,
        "generated_mean_new_tokens": sum(out.new_tokens) / rows,
        "mean_new_tokens": sum(p.new_tokens for p in predictions) / rows,
        # beam search's and MBR's extra cost: positions decoded per answer token (greedy: about 1)
        "decoding_work_ratio": out.decoding_work_ratio,
        "batch_size": out.batch_size,
        "peak_gpu_memory_gb": out.peak_gpu_memory_gb,
    }


def predict(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    g = params.profile.generation
    if g.engine == "onnx":
        from core.export.runtime import ExportedModel

        model = ExportedModel(paths.export, adapter=paths.aligned)
        answer = model.answer_rows
    else:
        from core.decode.answer import generate_responses
        from core.models.families import model_for

        model = model_for(params.profile, params.prompt.system, job="generate")
        model.load_adapter(paths.aligned)
        answer = functools.partial(generate_responses, model)
    splits = {"val": atomic.read_jsonl(paths.val), "test": atomic.read_jsonl(paths.test)}
    decoding = for_answering(g, len(splits["val"]))
    answers = {"val": answer(splits["val"], decoding)}
    log_answers("val", splits["val"], answers["val"])
    # the validation answers choose the length; the test rows are answered at it, not past it
    length = choose_length(answers["val"], [row[TARGET] for row in splits["val"]], decoding, model.decode)
    if length.max_new_tokens == 0:
        answers["test"] = prefix_alone(splits["test"], g.answer_prefix)
        logging.info(
            "test: answer length 0, so every answer is the answer prefix alone (%s): the model was not asked",
            g.answer_prefix,
        )
    else:
        answers["test"] = answer(splits["test"], for_test(decoding, length.max_new_tokens))
        log_answers("test", splits["test"], answers["test"])
    report, files = {}, {}
    # Both splits are answered before anything is written: a run stopped half-way leaves the
    # last good predictions and their metrics as they were, not a new val.csv beside an old test.csv.
    written = {"val": paths.val_predictions, "test": paths.test_predictions}  # inside paths.predictions
    # the validation answers as generated, before the length cut: deploy's engine comparison where the
    # chosen length leaves the model nothing to write
    uncut = cut(answers["val"], decoding.longest_answer, model.decode)
    files[Path(paths.val_longest_predictions).name] = predictions_csv(splits["val"], uncut)
    for split, rows in splits.items():
        out = answers[split]
        predictions = cut(out, length.max_new_tokens, model.decode)
        files[Path(written[split]).name] = predictions_csv(rows, predictions)
        report[split] = split_record(out, predictions)
    # the decoding that made these answers, beside their cost, for a compact `dvc exp show`
    report.update(
        engine=g.engine,
        num_beams=g.num_beams,
        mbr_candidates=g.mbr_candidates,
        repetition_penalty=g.repetition_penalty,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        answer_prefix=g.answer_prefix,
        length=length.as_record(),
    )
    if length.chosen_by != "validation ROUGE-L":
        logging.warning(
            "answer length: max_new_tokens %d from params.yaml (%s)", length.max_new_tokens, length.chosen_by
        )
    outputs.write_files(paths.predictions, files)
    outputs.write_json(paths.predict_metrics, report)


def main(outputs: atomic.Outputs) -> None:
    predict(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
