"""export: the (aligned) adapter merged into its base model, and that model quantized for a CPU engine."""

import logging

from core import atomic
from core.config import Params, load_params
from core.export.build import build_onnx, export_profile, merge
from core.models.families import model_for
from core.paths import Paths, read_table
from core.resources import directory_mb
from stages import run


def export(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    model = model_for(export_profile(params.profile), params.prompt.system)
    merged, exported = outputs.path(paths.merged), outputs.path(paths.export)
    parameters = merge(model, paths.aligned, merged)
    build_onnx(model, merged, exported, params.export.precision, paths.aligned, parameters)
    logging.info(
        "%s: %.0f MB (%s weights, %d parameters); %s: %.0f MB",
        paths.export,
        directory_mb(exported),
        params.export.precision,
        parameters,
        paths.merged,
        directory_mb(merged),
    )
    model.cleanup_model()


def main(outputs: atomic.Outputs) -> None:
    export(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
