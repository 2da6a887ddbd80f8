"""prepare: check the raw CSVs and write the train/validation/test splits as JSONL."""

import logging
from pathlib import Path

from core import atomic
from core.config import load_params
from core.data import read_vignettes, split_train_val
from core.models.weights import check_available
from core.paths import PATHS
from stages import run


def main() -> None:
    params = load_params()
    # the base weights too, so that a profile that cannot run fails here, before DVC records its params
    check_available(params.profile)
    labelled = read_vignettes(params.data.train_csv, labelled=True)
    test = read_vignettes(params.data.test_csv, labelled=False)
    train, val = split_train_val(labelled, params.data.val_fraction, params.data.seed)
    splits = {PATHS.train: train, PATHS.val: val, PATHS.test: test}  # inside PATHS.prepared
    atomic.write_files(PATHS.prepared, {Path(path).name: atomic.jsonl_text(rows) for path, rows in splits.items()})
    logging.info("wrote %s: %d train, %d val, %d test rows", PATHS.prepared, len(train), len(val), len(test))


if __name__ == "__main__":
    run(main)
