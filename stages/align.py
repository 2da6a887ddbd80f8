"""align: preference tuning (DPO) of the SFT adapter; with `align.method: none`, the SFT adapter as it is."""

import logging
import shutil

from core import atomic
from core.config import Params, as_dict, load_params
from core.data import LLM_COLUMNS, DataError
from core.models.base import check_adapter
from core.models.families import model_for
from core.paths import Paths, read_table
from core.train import dpo
from core.train.common import write_training_log
from stages import run

MARGIN_PLOTS = ("rewards/margins", "eval/rewards/margins")  # dvc.yaml's DPO plot: present, empty without DPO


def align(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    config = params.align
    if config.method == "none":
        # The same files under another name: the same DVC hash, so predict's inputs do not change.
        check_adapter(paths.adapter)  # a damaged adapter is named here, not copied on under another name
        shutil.copytree(paths.adapter, outputs.path(paths.aligned))
        write_training_log(outputs.path(paths.align_log), [], always=MARGIN_PLOTS)
        outputs.write_json(paths.align_metrics, {"align_method": "none"})
        logging.info("align.method is none: %s is the SFT adapter", paths.aligned)
        return

    train, val = atomic.read_jsonl(paths.train), atomic.read_jsonl(paths.val)
    model = model_for(params.profile, params.prompt.system)
    model.load_adapter(paths.adapter, trainable=True)
    own = dpo.own_answers(model, train + val) if "sft" in config.rejected else None
    train_pairs, val_pairs = dpo.build_pairs(train, config.rejected, own), dpo.build_pairs(val, config.rejected, own)
    if not train_pairs.pairs:
        raise DataError(
            f"{paths.train}: no preference pair for align.method: dpo: none of the {len(train)} rows has a usable "
            f"rejected answer from {', '.join(config.rejected)} (the {', '.join(LLM_COLUMNS)} columns are "
            "empty, missing or the clinician's text); add them, or set align.method: none"
        )
    if train_pairs.skipped:
        logging.warning(
            "%d of %d train rows have no usable rejected answer and give no pair", len(train_pairs.skipped), len(train)
        )
    # max_pairs bounds the time: the validation pairs DPO is scored on are sampled to the same number
    pairs = dpo.sample_pairs(train_pairs.pairs, config.max_pairs, config.seed)
    val_sample = dpo.sample_pairs(val_pairs.pairs, config.max_pairs, config.seed)
    logging.info(
        "%d preference pairs (%s), %d used; %d validation pairs, %d used",
        len(train_pairs.pairs),
        ", ".join(f"{k} {v}" for k, v in sorted(train_pairs.by_source.items())),
        len(pairs),
        len(val_pairs.pairs),
        len(val_sample),
    )
    run_dir = f"{paths.checkpoints}/align-{atomic.fingerprint(as_dict(config), as_dict(params.profile), train, val)}"
    metrics = dpo.align(model, pairs, val_sample, config, run_dir)
    model.save_adapter(outputs.path(paths.aligned))
    write_training_log(outputs.path(paths.align_log), model.training_log, always=MARGIN_PLOTS)
    # under "dpo": names like train_loss would otherwise clash with finetune's in `dvc exp show`
    outputs.write_json(
        paths.align_metrics,
        {
            "align_method": config.method,
            "dpo": {
                "beta": config.beta,
                "learning_rate": config.learning_rate,
                "rows_without_pair": len(train_pairs.skipped),
                "pairs_by_source": train_pairs.by_source,
                **metrics,
            },
        },
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    logging.info("aligned adapter in %s; val reward accuracy %s", paths.aligned, metrics.get("val_reward_accuracy"))
    model.cleanup_model()


def main(outputs: atomic.Outputs) -> None:
    align(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
