"""Preference tuning after SFT: pairs from the labelled rows, and DPO on the SFT adapter.

A pair is (a vignette, the clinician's answer as chosen, another answer as rejected). The
rejected answers come from the LLM columns of the labelled CSV (GPT4.0, LLAMA, GEMINI: long,
generic, formatted answers the clinicians' differ from) and/or the SFT model's own answers to
the train prompts (on-policy). DPO then moves the SFT adapter towards the chosen answers,
against a frozen copy of the same SFT adapter as the reference.

Pairs are encoded exactly as SFT encodes its examples: the prompt is `prompt_for(row)`, the
tokens predict feeds, and each answer ends with the family's end-of-turn token; the loss is on
the answers only. trl's DPOTrainer would re-tokenise prompt and answer together; it is handed
token ids instead (see `_pretokenized_dpo_trainer`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import AlignConfig, GenerationConfig
from core.data import ID, LLM_COLUMNS, TARGET, DataError
from core.metrics.rouge import normalise
from core.train.common import common_trainer_arguments, divergence_guard, fit, fit_example


@dataclass
class PreferencePairs:
    pairs: list[dict] = field(default_factory=list)  # {"row": row, "chosen": text, "rejected": text, "source": name}
    skipped: list[str] = field(default_factory=list)  # ids of rows with no usable rejected answer
    by_source: dict[str, int] = field(default_factory=dict)


def build_pairs(
    rows: Iterable[dict], sources: Iterable[str], own_answers: dict[str, str] | None = None
) -> PreferencePairs:
    """One pair per usable rejected answer of each row: a non-empty LLM column (`llm`) or the
    SFT model's own answer (`sft`, from `own_answers` by id). An answer that is empty, or the
    clinician's own text after the host's normalisation, teaches nothing and is not used; a
    row left with none is skipped and counted. A missing LLM column is an empty one."""
    result = PreferencePairs()
    sources = list(sources)
    for row in rows:
        chosen = row[TARGET].strip()
        candidates = []
        if "llm" in sources:
            candidates += [(column, row.get(column, "")) for column in LLM_COLUMNS]
        if "sft" in sources and own_answers is not None:
            candidates.append(("sft", own_answers.get(row[ID], "")))
        usable = [
            (name, text.strip()) for name, text in candidates if text.strip() and normalise(text) != normalise(chosen)
        ]
        if not usable:
            result.skipped.append(row[ID])
        for name, text in usable:
            result.pairs.append({"row": row, "chosen": chosen, "rejected": text, "source": name})
            result.by_source[name] = result.by_source.get(name, 0) + 1
    return result


def own_answers(model, rows: list[dict], generation: GenerationConfig) -> dict[str, str]:
    """The SFT model's greedy answers to `rows`, by id: on-policy rejected answers. Only as many
    tokens as the longest clinician's answer are generated, since a rejected answer is cut to
    its chosen answer's length anyway (preference_examples)."""
    longest = max(len(model.encode(row[TARGET].strip() + model.end_of_turn)) for row in rows)
    greedy = dataclasses.replace(
        generation, do_sample=False, num_beams=1, mbr_candidates=0, min_new_tokens=0, max_new_tokens=longest
    )
    out = model.generate_responses(rows, greedy)
    return {row[ID]: text for row, text in zip(rows, out.texts, strict=True)}


def sample_pairs(pairs: list[dict], limit: int, seed: int) -> list[dict]:
    """At most `limit` pairs (0: all), a seeded sample in the original order."""
    if not limit or len(pairs) <= limit:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def preference_examples(model, pairs: list[dict]) -> tuple[dict[str, list], int]:
    """Token ids of the pairs, as SFT encodes its examples (core.models.base.training_examples).

    The chosen answer and its end-of-turn token are kept whole; a prompt too long for the window
    loses its middle (core.train.common.fit_example), and a pair that would lose too much is left
    out (counted). The rejected answer is cut to the chosen answer's length: DPO then compares
    answers of equal length, so what it can learn is their content and form, not that the
    clinicians write shorter answers than the LLMs (which a length penalty at decoding already
    controls); it also halves the cost of the long LLM answers.
    """
    limit = model.profile.max_seq_length
    data: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    left_out = 0
    for pair in pairs:
        prompt = model.encode(model.prompt_for(pair["row"]))
        chosen = model.encode(pair["chosen"] + model.end_of_turn)
        rejected = model.encode(pair["rejected"] + model.end_of_turn)
        fitted = fit_example(prompt, chosen, limit)
        if fitted is None:
            left_out += 1
            continue
        data["prompt_ids"].append(fitted)
        data["chosen_ids"].append(chosen)
        data["rejected_ids"].append(rejected[: len(chosen)])
    return data, left_out


def _pretokenized_dpo_trainer():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """trl's DPOTrainer on pairs already encoded (prompt_ids, chosen_ids, rejected_ids).

        Its own preparation re-tokenises prompt + answer as one text, where tokens can merge
        across the boundary and the tokenizer may add a BOS the chat template already wrote:
        the prompt would no longer be the one prediction feeds."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    return PretokenizedDPOTrainer


def _dpo_trainer(model, train: dict, val: dict, config: AlignConfig, output_dir: str | Path):
    from datasets import Dataset
    from trl import DPOConfig

    args = DPOConfig(
        # evaluated once, after training (direct_preference_optimisation): on a CPU one pass over the
        # validation pairs costs minutes, and an epoch-end pass would repeat the final one
        **common_trainer_arguments(
            output_dir,
            seed=config.seed,
            evaluate=False,
            dtype=model.dtype,
            max_length=model.profile.max_seq_length,
            save_steps=50,
        ),
        beta=config.beta,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # a fraction of all steps
    )
    model.backend.for_training(model.model)
    return _pretokenized_dpo_trainer()(
        model=model.model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_dict(train),
        eval_dataset=Dataset.from_dict(val) if val["prompt_ids"] else None,
        processing_class=model.tokenizer,
        callbacks=[divergence_guard(config.learning_rate)],
    )


def direct_preference_optimisation(
    model, train_pairs: list[dict], val_pairs: list[dict], config: AlignConfig, output_dir: str | Path
) -> tuple[dict, list[dict]]:
    """DPO of the adapter on `model` (loaded trainable), against a frozen copy of itself.

    trl adds the copy (adapter "ref") when handed a PeftModel that already has an adapter; it is
    deleted afterwards, so that saving writes the trained adapter alone. Resumes from the last
    checkpoint in `output_dir` like fine_tune. Returns the run's metrics and the trainer's log history."""
    from transformers import set_seed

    model.backend.prepare_preference_training()
    set_seed(config.seed)
    train, train_left_out = preference_examples(model, train_pairs)
    val, val_left_out = preference_examples(model, val_pairs)
    if not train["prompt_ids"]:
        raise DataError(
            f"no preference pair fits max_seq_length={model.profile.max_seq_length} with its whole chosen answer"
        )
    trainer = _dpo_trainer(model, train, val, config, output_dir)
    run = fit(trainer, output_dir)
    if "ref" in model.model.peft_config:
        model.model.delete_adapter("ref")
    history = trainer.state.log_history
    final_eval = trainer.evaluate() if val["prompt_ids"] else {}
    last = next((e for e in reversed(history) if "loss" in e), {})
    metrics = {
        "train_loss": last.get("loss"),
        "train_runtime_s": run.seconds,
        "resumed_from_step": run.resumed_from_step,
        "steps": trainer.state.global_step,
        "pairs": {"train": len(train["prompt_ids"]), "val": len(val["prompt_ids"])},
        "pairs_left_out": {"train": train_left_out, "val": val_left_out},
        "train_reward_accuracy": last.get("rewards/accuracies"),
        "train_reward_margin": last.get("rewards/margins"),
    }
    if final_eval:
        metrics.update(
            val_loss=final_eval["eval_loss"],
            val_reward_accuracy=final_eval.get("eval_rewards/accuracies"),
            val_reward_margin=final_eval.get("eval_rewards/margins"),
        )
    return metrics, history
