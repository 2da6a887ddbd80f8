"""prepare: check the raw CSVs and write the train/validation/test splits as JSONL."""

import logging
from pathlib import Path

from core import atomic
from core.config import Params, load_params
from core.data import read_vignettes, split_labelled
from core.models.weights import check_available
from core.paths import Paths, read_table
from stages import run


def prepare(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    # the base weights too, so that a profile that cannot run fails here, before DVC records its params
    check_available(params.profile)
    labelled = read_vignettes(params.data.train_csv, labelled=True)
    test = read_vignettes(params.data.test_csv, labelled=False)
    train, val = split_labelled(labelled, params.data)
    splits = {paths.train: train, paths.val: val, paths.test: test}  # inside paths.prepared
    outputs.write_files(paths.prepared, {Path(path).name: atomic.jsonl_text(rows) for path, rows in splits.items()})
    held_out = f"fold {params.data.fold} of {params.data.folds}" if params.data.folds else "val_fraction"
    logging.info(
        "wrote %s: %d train, %d val (%s), %d test rows", paths.prepared, len(train), len(val), held_out, len(test)
    )


def main(outputs: atomic.Outputs) -> None:
    prepare(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
