"""finetune: LoRA fine-tuning of the selected profile on the prepared train split."""
import contextlib
import logging
import shutil

from dvclive import Live

from core import distributed, io
from core.config import as_dict, load_params
from core.families import model_for
from stages import run

ADAPTER = "models/adapter"
CHECKPOINTS = "models/checkpoints"  # not a DVC out: it must survive an interrupted run to resume from
LIVE = "dvclive/finetune"
METRICS = "metrics/finetune.json"
# What `dvc exp show` compares across runs; the full record (example and parameter counts,
# backend, ...) is kept with the adapter, in profile.json.
COMPARED = ("train_loss", "val_loss", "train_runtime_s", "train_tokens_per_s", "steps", "effective_batch_size",
            "processes", "peak_gpu_memory_gb")


def run_card(params) -> dict:
    """The selected profile's key settings, resolved: each profile keeps its own keys in
    params.yaml, so without these one table of runs across profiles would need every profile's columns."""
    profile, training = params.profile, params.profile.training
    return {"lora_r": profile.lora.r, "learning_rate": training.learning_rate,
            "epochs": training.epochs, "max_steps": training.max_steps, "load_in_4bit": profile.load_in_4bit}


def main() -> None:
    params = load_params()
    train = io.read_jsonl("data/prepared/train.jsonl")
    val = io.read_jsonl("data/prepared/val.jsonl")
    # One checkpoint directory per (training settings, data): a resumed run never picks up another
    # run's state. Generation settings play no part in training, so they are left out.
    settings = as_dict(params)
    settings["profile"].pop("generation")
    run_dir = f"{CHECKPOINTS}/{io.fingerprint(settings, train, val)}"
    model = model_for(params.profile, params.prompt.system)
    # Imported only now: building the model has chosen its backend, and Unsloth must be
    # imported before anything imports transformers.
    from transformers.integrations import DVCLiveCallback

    # Under torchrun / accelerate launch every process trains; only rank 0 writes outputs.
    main_process = distributed.is_main_process()
    with Live(LIVE, save_dvc_exp=False, dvcyaml=None) if main_process else contextlib.nullcontext() as live:
        callbacks = [DVCLiveCallback(live=live)] if main_process else []
        metrics = model.fine_tune(train, val, params.profile.training, run_dir, callbacks=callbacks)
    distributed.barrier()  # every rank is done with the checkpoints
    if main_process:
        model.save_adapter(ADAPTER, extra={"training_run": metrics})
        io.write_json(METRICS, {**run_card(params), **{key: metrics[key] for key in COMPARED if key in metrics}})
        shutil.rmtree(run_dir, ignore_errors=True)
        logging.info("adapter in %s; train loss %.3f, val loss %.3f", ADAPTER, metrics["train_loss"], metrics.get("val_loss", float("nan")))
    model.cleanup_model()


if __name__ == "__main__":
    run(main)
