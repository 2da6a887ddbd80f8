"""Preference tuning after SFT: pairs from the labelled rows, and DPO on the SFT adapter.

A pair is (a vignette, the clinician's answer as chosen, another answer as rejected). The
rejected answers come from the LLM columns of the labelled CSV (GPT4.0, LLAMA, GEMINI: long,
generic, formatted answers the clinicians' differ from) and/or the SFT model's own answers to
the train prompts (on-policy). DPO then moves the SFT adapter towards the chosen answers,
against a frozen copy of the same SFT adapter as the reference.

Pairs are encoded exactly as SFT encodes its examples (`preference_examples`): the prompt is the
tokens predict feeds, and each answer ends with the family's end-of-turn token; the loss is on
the answers only. trl's DPOTrainer would re-tokenise prompt and answer together; it is handed
token ids instead (see `_pretokenized_dpo_trainer`). `align` is the entry point: it takes a
loaded BaseUnslothModel with its adapter trainable, encodes the pairs and calls
`direct_preference_optimisation`, which works on the bare module.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from core.config import AlignConfig
from core.data import ID, LLM_COLUMNS, TARGET, DataError
from core.metrics.rouge import normalise
from core.prompts import cut_middle, shortest_prompt
from core.train.common import divergence_guard, fit, fit_example, trainer_arguments

if TYPE_CHECKING:
    from core.models.base import BaseUnslothModel

# rows a batch of the SFT model's own answers (on a CPU, more rows only pad more)
OWN_ANSWERS_BATCH = 8


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


def own_answers(model: BaseUnslothModel, rows: list[dict]) -> dict[str, str]:
    """The SFT model's greedy answers to `rows`, by id: DPO's on-policy rejected answers.

    Plain greedy decoding through transformers' generate(), no answer prefix and no repetition
    rules: the answer the adapter itself writes (predict's decoding is the answering package's, which
    training does not depend on). Only as many tokens as the longest clinician's answer are generated,
    since a rejected answer is cut to its chosen answer's length anyway (fit_pairs); a prompt too
    long for the window loses its middle, as in training."""
    import torch

    model.load()
    longest = max(len(model.answer_ids(row[TARGET].strip())) for row in rows)
    limit = model.profile.max_seq_length
    room = max(limit - longest, shortest_prompt(limit))
    prompts = [cut_middle(model.encode(model.prompt_for(row)), room) for row in rows]
    model.backend.for_inference(model.model)
    device = next(model.model.parameters()).device
    answers = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), OWN_ANSWERS_BATCH), desc="own answers", unit="batch"):
            batch = model.tokenizer.pad({"input_ids": prompts[start : start + OWN_ANSWERS_BATCH]}, return_tensors="pt")
            out = model.model.generate(
                **batch.to(device),
                max_new_tokens=longest,
                do_sample=False,
                num_beams=1,
                eos_token_id=model.stop_id,
                pad_token_id=model.tokenizer.pad_token_id,
            )
            new = out[:, batch["input_ids"].shape[1] :].tolist()
            for row, ids in zip(rows[start : start + OWN_ANSWERS_BATCH], new, strict=True):
                answers[row[ID]] = model.decode(ids[: ids.index(model.stop_id)] if model.stop_id in ids else ids)
    return answers


def preference_examples(model: BaseUnslothModel, pairs: list[dict]) -> tuple[dict[str, list], int]:
    """Token ids of preference pairs, encoded as SFT's training examples are: the prompt predict
    feeds, each answer ending with the end-of-turn token (fit_pairs fits them to the window).
    Returns the ids and the number of pairs left out."""
    model.load()
    encoded = [
        (
            model.encode(model.prompt_for(pair["row"])),
            model.answer_ids(pair["chosen"]),
            model.answer_ids(pair["rejected"]),
        )
        for pair in pairs
    ]
    return fit_pairs(encoded, model.profile.max_seq_length)


def align(
    model: BaseUnslothModel, train_pairs: list[dict], val_pairs: list[dict], config: AlignConfig, output_dir: str | Path
) -> dict:
    """DPO of the loaded (trainable) adapter against a frozen copy of itself, on preference pairs;
    resumes like fine-tuning. Returns the run's metrics; the trainer's log history is left in
    `model.training_log`."""
    from transformers import set_seed

    model.load()
    model.backend.prepare_preference_training()
    set_seed(config.seed)
    train, train_left_out = preference_examples(model, train_pairs)
    val, val_left_out = preference_examples(model, val_pairs)
    if not train["prompt_ids"]:
        raise DataError(
            f"no preference pair fits max_seq_length={model.profile.max_seq_length} with its whole chosen answer"
        )
    model.backend.for_training(model.model)
    metrics, model.training_log = direct_preference_optimisation(
        model.model, model.tokenizer, train, val, config, output_dir, model.dtype, model.profile.max_seq_length
    )
    metrics["pairs_left_out"] = {"train": train_left_out, "val": val_left_out}
    return metrics


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
