"""Supervised fine-tuning of a LoRA adapter with trl's SFTTrainer, in four steps: the run's
layout (passes, padding), the trainer, the fit (resuming where a checkpoint is), the record of
the run.

`fine_tune` is the entry point: it takes a loaded BaseUnslothModel (core/models/base.py),
attaches LoRA, encodes the rows (`training_examples`) and trains (`train_lora`, which works on
a bare module, its tokenizer and the encoded examples). transformers and trl are imported inside
functions (Unsloth must be imported before them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core import distributed
from core.config import ConfigError, TrainingConfig
from core.data import ID, TARGET
from core.train.common import (
    TrainingExamples,
    best_epoch,
    divergence_guard,
    fit,
    resume_point,
    trainer_arguments,
)

if TYPE_CHECKING:
    from core.models.base import BaseUnslothModel

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


def training_examples(model: BaseUnslothModel, rows: Iterable[dict]) -> TrainingExamples:
    """Token ids and labels for training: prompt tokens are masked out of the loss, the
    response and its end-of-turn token are learned.

    Prompt and response are encoded apart so the prompt's tokens are exactly those that
    prediction feeds the model. A row longer than max_seq_length keeps its whole answer and
    loses the middle of its prompt, or is dropped (core.train.common.fit_example); both are logged
    by id.
    """
    model.load()
    examples = TrainingExamples()
    limit = model.profile.max_seq_length
    for row in rows:
        prompt_ids = model.encode(model.prompt_for(row))
        examples.add(
            str(row.get(ID, len(examples.input_ids))), prompt_ids, model.answer_ids(row[TARGET].strip()), limit
        )
    total = len(examples.input_ids) + len(examples.dropped)
    if examples.prompt_cut:
        log.warning(
            "%d of %d rows are longer than max_seq_length=%d: trained on with the middle of the prompt cut, "
            "the answer whole (%s)",
            len(examples.prompt_cut),
            total,
            limit,
            ", ".join(examples.prompt_cut),
        )
    if examples.dropped:
        log.warning(
            "%d of %d rows left out: the answer alone leaves less than a quarter of max_seq_length=%d to the "
            "prompt (%s)",
            len(examples.dropped),
            total,
            limit,
            ", ".join(examples.dropped),
        )
    return examples


def fine_tune(
    model: BaseUnslothModel,
    train_rows: list[dict],
    val_rows: list[dict],
    training: TrainingConfig,
    output_dir: str | Path,
    callbacks: Iterable[Any] = (),
) -> dict:
    """LoRA fine-tuning of `model` with trl's SFTTrainer; resumes from the last checkpoint in
    `output_dir` if one is there. Returns the run's metrics; the trainer's log history is left in
    `model.training_log`."""
    from transformers import set_seed

    model.load()
    set_seed(training.seed)  # before the LoRA weights are drawn
    if not hasattr(model.model, "peft_config"):
        model.attach_lora(training.seed, training.gradient_checkpointing)
    train = training_examples(model, train_rows)
    if not train.input_ids:
        raise ConfigError(
            f"params.yaml: models.{model.profile.key}.max_seq_length: no training row fits in "
            f"{model.profile.max_seq_length} tokens with its whole answer; raise it"
        )
    val = training_examples(model, val_rows) if val_rows else None
    model.backend.for_training(model.model)
    metrics, model.training_log = train_lora(
        model.model,
        model.tokenizer,
        train,
        val,
        training,
        output_dir,
        model.dtype,
        model.profile.max_seq_length,
        callbacks,
    )
    metrics["backend"] = model.backend.name
    metrics["trainable_params"], metrics["total_params"] = model.parameter_counts()
    return metrics


def train_lora(
    module,
    tokenizer,
    train: TrainingExamples,
    val: TrainingExamples | None,
    training: TrainingConfig,
    output_dir: str | Path,
    dtype,
    max_seq_length: int,
    callbacks: Iterable[Any] = (),
) -> tuple[dict, list[dict]]:
    """LoRA fine-tuning of `module` on `train`; resumes from the last checkpoint in `output_dir` if
    one is there. Returns the run's metrics and the trainer's log history."""
    layout = lay_out(module, train, val, training)
    trainer = sft_trainer(module, tokenizer, layout, training, output_dir, dtype, max_seq_length, callbacks)
    resume = resume_point(output_dir)
    keeper = best_epoch(module, output_dir, resume[1]) if layout.val and training.keep_best_epoch else None
    if keeper:
        trainer.add_callback(keeper)
    run = fit(trainer, output_dir, resume)
    return record(trainer, layout, run, keeper), trainer.state.log_history


def lay_out(module, train: TrainingExamples, val: TrainingExamples | None, training: TrainingConfig) -> Layout:
    on_gpu = torch.cuda.is_available()
    rows_per_pass, grad_accum = distributed.passes(
        training.batch_size, training.grad_accum, training.rows_per_pass, on_gpu
    )
    # Without padding a pass costs what its tokens cost (rows were fitted to max_seq_length
    # above), where the attention takes concatenated rows as they are: flash attention's
    # variable-length kernels. sdpa instead gets a dense block-diagonal mask over the whole
    # pass, and on the Qwen3-0.6B shape that cost more than the padding saved (docs/benchmarks.md)
    packs = "flash" in str(getattr(module.config, "_attn_implementation", ""))
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


def sft_trainer(
    module,
    tokenizer,
    layout: Layout,
    training: TrainingConfig,
    output_dir: str | Path,
    dtype,
    max_seq_length: int,
    callbacks: Iterable[Any],
):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(
            output_dir,
            training,
            evaluate=bool(layout.val),
            dtype=dtype,
            max_length=None if layout.padding_free else max_seq_length,
            rows_per_pass=layout.rows_per_pass,
            grad_accum=layout.grad_accum,
        ),
        padding_free=layout.padding_free,
        packing=False,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient on every step
    )
    # trl's collator pads on the right itself: the tokenizer keeps the side its owner set
    return SFTTrainer(
        model=module,
        args=args,
        train_dataset=layout.train.as_dataset(),
        eval_dataset=layout.val.as_dataset() if layout.val else None,
        processing_class=tokenizer,
        callbacks=[divergence_guard(training.learning_rate), *callbacks],
    )


def record(trainer, layout: Layout, run, keeper) -> dict:
    """The run's metrics; with a validation split, the weights of the best epoch put back."""
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
        "processes": layout.processes,
        "effective_batch_size": layout.effective_batch,
        "rows_per_pass": layout.rows_per_pass,
        "padding_free": layout.padding_free,
    }
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
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics
