"""predict: generate responses for the validation and test splits with the fine-tuned (and aligned) adapter."""
import logging

from core import io
from core.config import load_params
from core.predictions import Prediction, predictions_csv
from stages import run

ADAPTER = "models/aligned"  # the align stage's output: the SFT adapter, preference-tuned or as it is
EXPORT = "models/export"  # the export stage's quantized model, for generation.engine: onnx
OUT = "data/predictions"
METRICS = "metrics/predict.json"


def main() -> None:
    params = load_params()
    g = params.profile.generation
    if g.engine == "onnx":
        from core.engine import ExportedModel

        model = ExportedModel(EXPORT, adapter=ADAPTER)
        answer = model.answer_rows
    else:
        from core.families import model_for

        model = model_for(params.profile, params.prompt.system, job="generate")
        model.load_adapter(ADAPTER)
        answer = model.generate_responses
    report, files = {}, {}
    # Both splits are answered before anything is written: a run stopped half-way leaves the
    # last good predictions and their metrics as they were, not a new val.csv beside an old test.csv.
    for split in ("val", "test"):
        rows = io.read_jsonl(f"data/prepared/{split}.jsonl")
        out = answer(rows, g)
        predictions = [Prediction(*fields) for fields in zip(out.texts, out.new_tokens, out.stopped)]
        files[f"{split}.csv"] = predictions_csv(rows, predictions)
        report[split] = {
            "rows": len(rows),
            "seconds": out.seconds,
            "seconds_per_row": out.seconds / max(len(rows), 1),
            "tokens_per_s": out.tokens_per_second,
            "mean_new_tokens": sum(out.new_tokens) / max(len(rows), 1),
            # beam search's and MBR's extra cost: positions decoded per answer token (greedy: about 1)
            "decoding_work_ratio": out.decoding_work_ratio,
            "batch_size": out.batch_size,
            "peak_gpu_memory_gb": out.peak_gpu_memory_gb,
        }
        logging.info("%s: %d responses in %.1f s, %.1f tokens/s, %.1f positions decoded per answer token",
                     split, len(rows), out.seconds, out.tokens_per_second, out.decoding_work_ratio)
    # the decoding that made these answers, beside their cost, for a compact `dvc exp show`
    report.update(engine=g.engine, num_beams=g.num_beams, mbr_candidates=g.mbr_candidates, max_new_tokens=g.max_new_tokens,
                  repetition_penalty=g.repetition_penalty)
    io.write_files(OUT, files)
    io.write_json(METRICS, report)


if __name__ == "__main__":
    run(main)
