"""finetune: LoRA fine-tuning of the selected profile on the prepared train split."""

import logging
import shutil

from core import atomic, distributed
from core.config import Params, as_dict, load_params
from core.models.families import model_for
from core.paths import Paths, read_table
from core.train.common import write_training_log
from core.train.sft import fine_tune
from stages import run

# The run's record beside the settings `dvc exp show` compares; the adapter directory holds
# nothing of the run itself, so that the same inputs give the same adapter.
RECORDED = (
    "train_loss",
    "val_loss",
    "best_epoch",
    "val_loss_last_epoch",
    "val_loss_by_epoch",
    "train_runtime_s",
    "train_tokens_per_s",
    "resumed_from_step",
    "steps",
    "effective_batch_size",
    "processes",
    "peak_gpu_memory_gb",
    "train_examples",
    "prompts_cut",
    "rows_dropped",
    "backend",
)


def run_card(params) -> dict:
    """The selected profile's key settings, resolved: each profile keeps its own keys in
    params.yaml, so without these one table of runs across profiles would need every profile's columns."""
    profile, training = params.profile, params.profile.training
    return {
        "lora_r": profile.lora.r,
        "learning_rate": training.learning_rate,
        "epochs": training.epochs,
        "max_steps": training.max_steps,
        "load_in_4bit": profile.load_in_4bit,
        "keep_best_epoch": training.keep_best_epoch,
    }


def finetune(params: Params, paths: Paths, outputs: atomic.Outputs) -> None:
    train = atomic.read_jsonl(paths.train)
    val = atomic.read_jsonl(paths.val)
    # One checkpoint directory per (training settings, data): a resumed run never picks up another
    # run's state. Generation settings play no part in training, so they are left out.
    settings = as_dict(params)
    settings["profile"].pop("generation")
    run_dir = f"{paths.checkpoints}/{atomic.fingerprint(settings, train, val)}"
    model = model_for(params.profile, params.prompt.system)
    # Under torchrun / accelerate launch every process trains; only rank 0 writes outputs, and
    # only once training has finished: an interrupted run leaves the last good ones in place.
    metrics = fine_tune(model, train, val, params.profile.training, run_dir)
    distributed.barrier()  # every rank is done with the checkpoints
    if distributed.is_main_process():
        model.save_adapter(outputs.path(paths.adapter))
        write_training_log(outputs.path(paths.finetune_log), model.training_log)
        outputs.write_json(
            paths.finetune_metrics, {**run_card(params), **{key: metrics[key] for key in RECORDED if key in metrics}}
        )
        shutil.rmtree(run_dir, ignore_errors=True)
        logging.info(
            "adapter in %s; train loss %.3f, val loss %.3f",
            paths.adapter,
            metrics["train_loss"],
            metrics.get("val_loss", float("nan")),
        )
    model.cleanup_model()


def main(outputs: atomic.Outputs) -> None:
    finetune(load_params(), read_table(), outputs)


if __name__ == "__main__":
    run(main)
