"""export: the (aligned) adapter merged into its base model, and that model quantized for a CPU engine."""

import logging

from core.config import load_params
from core.export.build import build_onnx, export_profile, merge
from core.models.families import model_for
from core.resources import directory_mb
from stages import run

ADAPTER = "models/aligned"  # what predict answers with
MERGED = "models/merged"  # standalone checkpoint: safetensors, tokenizer, our chat template
EXPORT = "models/export"  # ONNX Runtime GenAI model, quantized (core/export/runtime.py runs it)


def main() -> None:
    params = load_params()
    model = model_for(export_profile(params.profile), params.prompt.system)
    parameters = merge(model, ADAPTER, MERGED)
    build_onnx(model, MERGED, EXPORT, params.export.precision, ADAPTER, parameters)
    logging.info(
        "%s: %.0f MB (%s weights, %d parameters); %s: %.0f MB",
        EXPORT,
        directory_mb(EXPORT),
        params.export.precision,
        parameters,
        MERGED,
        directory_mb(MERGED),
    )
    model.cleanup_model()


if __name__ == "__main__":
    run(main)
