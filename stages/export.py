"""export: the (aligned) adapter merged into its base model, and that model quantized for a CPU engine."""

import logging

from core.config import load_params
from core.export.build import build_onnx, export_profile, merge
from core.models.families import model_for
from core.paths import PATHS
from core.resources import directory_mb
from stages import run


def main() -> None:
    params = load_params()
    model = model_for(export_profile(params.profile), params.prompt.system)
    parameters = merge(model, PATHS.aligned, PATHS.merged)
    build_onnx(model, PATHS.merged, PATHS.export, params.export.precision, PATHS.aligned, parameters)
    logging.info(
        "%s: %.0f MB (%s weights, %d parameters); %s: %.0f MB",
        PATHS.export,
        directory_mb(PATHS.export),
        params.export.precision,
        parameters,
        PATHS.merged,
        directory_mb(PATHS.merged),
    )
    model.cleanup_model()


if __name__ == "__main__":
    run(main)
