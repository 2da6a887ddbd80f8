"""Supervised fine-tuning of a loaded model's LoRA adapter with trl's SFTTrainer, in four steps:
the run's layout (examples, passes, padding), the trainer, the fit (resuming where a checkpoint
is), the record of the run.

`model` is a BaseUnslothModel (core/models/base.py) whose weights are loaded: its `fine_tune`
calls `fine_tune` here. transformers and trl are imported inside functions (Unsloth must be
imported before them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import distributed
from core.config import ConfigError, TrainingConfig
from core.models.backends import cuda_available
from core.train.common import (
    TrainingExamples,
    best_epoch,
    common_trainer_arguments,
    divergence_guard,
    fit,
    resume_point,
)

log = logging.getLogger(__name__)


@dataclass
class Layout:
    """What one SFT run trains on and how its optimiser steps are cut into passes."""

    train: TrainingExamples
    val: TrainingExamples | None
    rows_per_pass: int
    grad_accum: int  # passes a step, in each process
    processes: int
    effective_batch: int  # rows a step, all processes together
    padding_free: bool


def fine_tune(
    model,
    train_rows: list[dict],
    val_rows: list[dict],
    training: TrainingConfig,
    output_dir: str | Path,
    callbacks: Iterable[Any] = (),
) -> tuple[dict, list[dict]]:
    """LoRA fine-tuning of `model`; resumes from the last checkpoint in `output_dir` if one is
    there. Returns the run's metrics and the trainer's log history."""
    from transformers import set_seed

    set_seed(training.seed)
    if not hasattr(model.model, "peft_config"):
        model.attach_lora(training.seed, training.gradient_checkpointing)
    layout = lay_out(model, train_rows, val_rows, training)
    trainer = sft_trainer(model, layout, training, output_dir, callbacks)
    resume = resume_point(output_dir)
    keeper = best_epoch(model.model, output_dir, resume[1]) if layout.val and training.keep_best_epoch else None
    if keeper:
        trainer.add_callback(keeper)
    run = fit(trainer, output_dir, resume)
    model.tokenizer.padding_side = "left"  # for generation
    return record(model, trainer, layout, run, keeper), trainer.state.log_history


def lay_out(model, train_rows: list[dict], val_rows: list[dict], training: TrainingConfig) -> Layout:
    train = model.training_examples(train_rows)
    if not train.input_ids:
        raise ConfigError(
            f"params.yaml: models.{model.profile.key}.max_seq_length: no training row fits in "
            f"{model.profile.max_seq_length} tokens with its whole answer; raise it"
        )
    val = model.training_examples(val_rows) if val_rows else None
    on_gpu = cuda_available()
    rows_per_pass, grad_accum = distributed.passes(
        training.batch_size, training.grad_accum, training.rows_per_pass, on_gpu
    )
    # Without padding a pass costs what its tokens cost (rows were fitted to max_seq_length
    # above), where the attention takes concatenated rows as they are: flash attention's
    # variable-length kernels. sdpa instead gets a dense block-diagonal mask over the whole
    # pass, and on the Qwen3-0.6B shape that cost more than the padding saved (docs/benchmarks.md)
    packs = "flash" in str(getattr(model.model.config, "_attn_implementation", ""))
    layout = Layout(
        train,
        val,
        rows_per_pass,
        grad_accum,
        distributed.world_size(),
        training.batch_size * training.grad_accum,  # the same on any number of processes
        on_gpu and packs if training.padding_free == "auto" else training.padding_free,
    )
    log.info(
        "%d rows a pass x %d passes a step x %d processes = effective batch %d%s",
        layout.rows_per_pass,
        layout.grad_accum,
        layout.processes,
        layout.effective_batch,
        ", padding-free" if layout.padding_free else "",
    )
    return layout


def sft_trainer(model, layout: Layout, training: TrainingConfig, output_dir: str | Path, callbacks: Iterable[Any]):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **common_trainer_arguments(
            output_dir,
            seed=training.seed,
            evaluate=bool(layout.val),
            dtype=model.dtype,
            max_length=None if layout.padding_free else model.profile.max_seq_length,
            save_steps=training.save_steps,
            logging_steps=training.logging_steps,
        ),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=layout.rows_per_pass,
        # the trainer averages the batches' mean losses: a fixed eval batch keeps val_loss
        # comparable whatever rows_per_pass is
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=layout.grad_accum,
        padding_free=layout.padding_free,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a fraction of all steps
        weight_decay=training.weight_decay,
        optim=training.optimizer,
        packing=False,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient on every step
    )
    model.backend.for_training(model.model)
    model.tokenizer.padding_side = "right"  # for training
    return SFTTrainer(
        model=model.model,
        args=args,
        train_dataset=layout.train.as_dataset(),
        eval_dataset=layout.val.as_dataset() if layout.val else None,
        processing_class=model.tokenizer,
        callbacks=[divergence_guard(training.learning_rate), *callbacks],
    )


def record(model, trainer, layout: Layout, run, keeper) -> dict:
    """The run's metrics; with a validation split, the weights of the best epoch put back."""
    import torch

    history = trainer.state.log_history  # a resumed run's entries follow its checkpoint's
    train_losses = [e["loss"] for e in history if "loss" in e]
    train, val = layout.train, layout.val
    metrics = {
        "train_loss": train_losses[-1] if train_losses else run.result.training_loss,
        "train_loss_mean": run.result.training_loss,
        "train_runtime_s": run.seconds,  # the whole run, the part before a resume included
        "train_tokens_per_s": train.n_tokens * trainer.state.epoch / run.seconds if run.seconds > 0 else 0.0,
        "resumed_from_step": run.resumed_from_step,
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "train_examples": len(train.input_ids),
        # rows longer than max_seq_length (core.train.common.fit_example), by split
        "prompts_cut": {"train": len(train.prompt_cut), "val": len(val.prompt_cut) if val else 0},
        "rows_dropped": {"train": len(train.dropped), "val": len(val.dropped) if val else 0},
        "backend": model.backend.name,
        "processes": layout.processes,
        "effective_batch_size": layout.effective_batch,
        "rows_per_pass": layout.rows_per_pass,
        "padding_free": layout.padding_free,
    }
    metrics["trainable_params"], metrics["total_params"] = model.parameter_counts()
    if val:
        # the epoch-end pass at the last step has scored the final weights already: not twice
        final = [e for e in history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
        metrics["val_loss"] = final[-1]["eval_loss"] if final else trainer.evaluate()["eval_loss"]
        metrics["val_loss_by_epoch"] = [e["eval_loss"] for e in history if "eval_loss" in e]
    if keeper and keeper.best:
        metrics["val_loss_last_epoch"] = metrics["val_loss"]
        if keeper.restore(trainer.state.global_step):
            log.info(
                "kept the weights of epoch %g (val loss %.4f), not the last epoch's (%.4f)",
                keeper.best["epoch"],
                keeper.best["val_loss"],
                metrics["val_loss"],
            )
        # every evaluation went through the keeper, the final one too: its best is the run's
        metrics["val_loss"], metrics["best_epoch"] = keeper.best["val_loss"], keeper.best["epoch"]
    if cuda_available():
        metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics
