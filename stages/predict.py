"""predict: generate responses for the validation and test splits with the fine-tuned adapter."""
import logging

from core import io
from core.config import load_params
from core.families import model_for
from core.predictions import Prediction, write_predictions
from stages import run

ADAPTER = "models/adapter"
METRICS = "metrics/predict.json"


def main() -> None:
    params = load_params()
    model = model_for(params.profile, params.prompt.system)
    model.load_adapter(ADAPTER)
    report = {}
    for split in ("val", "test"):
        rows = io.read_jsonl(f"data/prepared/{split}.jsonl")
        out = model.generate_responses(rows, params.profile.generation)
        predictions = [Prediction(*fields) for fields in zip(out.texts, out.new_tokens, out.stopped)]
        write_predictions(f"data/predictions/{split}.csv", rows, predictions)
        report[split] = {
            "seconds": out.seconds,
            "tokens_per_s": out.tokens_per_second,
            "mean_new_tokens": sum(out.new_tokens) / max(len(rows), 1),
            "batch_size": out.batch_size,
            "peak_gpu_memory_gb": out.peak_gpu_memory_gb,
        }
        logging.info("%s: %d responses, %.1f tokens/s", split, len(rows), out.tokens_per_second)
    io.write_json(METRICS, report)
    model.cleanup_model()


if __name__ == "__main__":
    run(main)
