"""export: the (aligned) adapter merged into its base model, and that model quantized for a CPU engine."""

import logging

from core.config import Params, load_params
from core.export.build import build_onnx, export_profile, merge
from core.models.families import model_for
from core.paths import Paths, read_table
from core.resources import directory_mb
from stages import run


def export(params: Params, paths: Paths) -> None:
    model = model_for(export_profile(params.profile), params.prompt.system)
    parameters = merge(model, paths.aligned, paths.merged)
    build_onnx(model, paths.merged, paths.export, params.export.precision, paths.aligned, parameters)
    logging.info(
        "%s: %.0f MB (%s weights, %d parameters); %s: %.0f MB",
        paths.export,
        directory_mb(paths.export),
        params.export.precision,
        parameters,
        paths.merged,
        directory_mb(paths.merged),
    )
    model.cleanup_model()


def main() -> None:
    export(load_params(), read_table())


if __name__ == "__main__":
    run(main)
