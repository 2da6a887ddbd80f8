"""Preference tuning after SFT: pairs from the labelled rows, and DPO on the SFT adapter.

A pair is (a vignette, the clinician's answer as chosen, another answer as rejected). The
rejected answers come from the LLM columns of the labelled CSV (GPT4.0, LLAMA, GEMINI: long,
generic, formatted answers the clinicians' differ from) and/or the SFT model's own answers to
the train prompts (on-policy). DPO then moves the SFT adapter towards the chosen answers,
against a frozen copy of the same SFT adapter as the reference.

Pairs are encoded exactly as SFT encodes its examples (BaseUnslothModel.preference_examples,
core/models/base.py): the prompt is the tokens predict feeds, and each answer ends with the
family's end-of-turn token; the loss is on the answers only. trl's DPOTrainer would re-tokenise
prompt and answer together; it is handed token ids instead (see `_pretokenized_dpo_trainer`).
Like core/train/sft.py, the training here works on what it is handed (a module, its tokenizer,
the ids): BaseUnslothModel.align prepares them and calls `direct_preference_optimisation`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import AlignConfig, GenerationConfig
from core.data import ID, LLM_COLUMNS, TARGET
from core.metrics.rouge import normalise
from core.train.common import divergence_guard, fit, fit_example, trainer_arguments


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


def on_policy_decoding(generation: GenerationConfig, longest: int) -> GenerationConfig:
    """The decoding of the SFT model's own answers (on-policy rejected answers): greedy, one
    candidate, at most `longest` tokens (the longest chosen answer: a rejected answer is cut to its
    chosen answer's length anyway, fit_pairs)."""
    return dataclasses.replace(
        generation, do_sample=False, num_beams=1, mbr_candidates=0, min_new_tokens=0, max_new_tokens=longest
    )


def sample_pairs(pairs: list[dict], limit: int, seed: int) -> list[dict]:
    """At most `limit` pairs (0: all), a seeded sample in the original order."""
    if not limit or len(pairs) <= limit:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def fit_pairs(encoded: list[tuple[list[int], list[int], list[int]]], limit: int) -> tuple[dict[str, list], int]:
    """Pairs of token ids (prompt, chosen, rejected; each answer with its end-of-turn token) fitted
    to a window of `limit` tokens, as SFT fits its examples (core.train.common.fit_example).

    The chosen answer is kept whole; a prompt too long for the window loses its middle, and a pair
    that would lose too much is left out (counted). The rejected answer is cut to the chosen
    answer's length: DPO then compares answers of equal length, so what it can learn is their
    content and form, not that the clinicians write shorter answers than the LLMs (which a length
    penalty at decoding already controls); it also halves the cost of the long LLM answers.
    """
    data: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    left_out = 0
    for prompt, chosen, rejected in encoded:
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


def _dpo_trainer(module, tokenizer, train: dict, val: dict, config: AlignConfig, output_dir, dtype, max_length: int):
    from datasets import Dataset
    from trl import DPOConfig

    args = DPOConfig(
        # evaluated once, after training (direct_preference_optimisation): on a CPU one pass over the
        # validation pairs costs minutes, and an epoch-end pass would repeat the final one
        **trainer_arguments(
            output_dir,
            config,
            evaluate=False,
            dtype=dtype,
            max_length=max_length,
            rows_per_pass=config.batch_size,
            grad_accum=config.grad_accum,
        ),
        beta=config.beta,
    )
    return _pretokenized_dpo_trainer()(
        model=module,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_dict(train),
        eval_dataset=Dataset.from_dict(val) if val["prompt_ids"] else None,
        processing_class=tokenizer,
        callbacks=[divergence_guard(config.learning_rate)],
    )


def direct_preference_optimisation(
    module, tokenizer, train: dict, val: dict, config: AlignConfig, output_dir: str | Path, dtype, max_length: int
) -> tuple[dict, list[dict]]:
    """DPO of the adapter on `module` (a PeftModel, trainable, in training mode) against a frozen
    copy of itself, on pairs of token ids (fit_pairs).

    trl adds the copy (adapter "ref") when handed a PeftModel that already has an adapter; it is
    deleted afterwards, so that saving writes the trained adapter alone. Resumes from the last
    checkpoint in `output_dir` like SFT. Returns the run's metrics and the trainer's log history."""
    trainer = _dpo_trainer(module, tokenizer, train, val, config, output_dir, dtype, max_length)
    run = fit(trainer, output_dir)
    if "ref" in module.peft_config:
        module.delete_adapter("ref")
    history = trainer.state.log_history
    final_eval = trainer.evaluate() if val["prompt_ids"] else {}
    last = next((e for e in reversed(history) if "loss" in e), {})
    metrics = {
        "train_loss": last.get("loss"),
        "train_runtime_s": run.seconds,
        "resumed_from_step": run.resumed_from_step,
        "steps": trainer.state.global_step,
        "pairs": {"train": len(train["prompt_ids"]), "val": len(val["prompt_ids"])},
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
