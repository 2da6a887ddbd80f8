"""BaseUnslothModel: load a causal LM, attach LoRA, fine-tune with trl's SFTTrainer, generate.

The backends (Unsloth on CUDA, transformers + peft anywhere) live in core/models/backends.py and
batched generation in core/decode/generation.py; this class ties them to one family's prompts.
transformers, peft and trl are imported inside functions, not at module level, on purpose:
Unsloth patches them when it is imported and must come first, so nothing may import them
before the backend has been chosen.

A family subclass (core/models/families.py) defines only what differs between model families:
its chat template, the token that ends the assistant's turn, a pad token, and if it wants
its own way of turning a row into the user message.
"""
from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from core import atomic, distributed
from core.config import ConfigError, GenerationConfig, ModelProfile, TrainingConfig, as_dict
from core.data import ID, TARGET
from core.decode.generation import Generations, generate
from core.errors import ArtifactError, CheckpointError, how_to_restore
from core.models.backends import cuda_available, resolve_backend, resolve_dtype
from core.prompts import answer_prefix, chat_messages, fit_to_window, tidy_answer, user_message
from core.train.common import (TrainingExamples, best_epoch, common_trainer_arguments, divergence_guard, resume_point,
                           run_clock)
from core.models.weights import resolve_checkpoint

log = logging.getLogger(__name__)

# Base models loaded in this process, keyed by what was loaded. peft edits a model in place
# when an adapter is attached, so a model leaves the cache at that moment.
_BASE_CACHE: dict[tuple, tuple[Any, Any]] = {}


class BaseUnslothModel:
    # --- what each family defines -------------------------------------------------------
    chat_template: str = ""  # Jinja, set on the tokenizer and saved with the adapter
    end_of_turn: str = ""  # the token that closes the assistant's turn: training target and stop token
    pad_token: str = ""  # a token that never occurs in text, distinct from end_of_turn

    def __init__(self, profile: ModelProfile, system_prompt: str, job: str = "train") -> None:
        """`job` (train | generate) is what the instance is for: `backend: auto` picks by it."""
        if not (self.chat_template and self.end_of_turn and self.pad_token):
            raise TypeError(f"{type(self).__name__} must define chat_template, end_of_turn and pad_token")
        self.profile = profile
        self.system_prompt = system_prompt
        self.backend = resolve_backend(profile.backend, job)
        self.dtype = resolve_dtype(profile.dtype)
        self.model = None
        self.tokenizer = None
        self.training_log: list[dict] = []  # the trainer's log history of the last fine_tune

    # --- prompts ------------------------------------------------------------------------
    def _create_input_prompt(self, row: dict) -> str:
        """The user message for a row (core/prompts.py); a family may override it."""
        return user_message(row)

    def messages_for(self, row: dict, response: str | None = None) -> list[dict]:
        return chat_messages(self.system_prompt, self._create_input_prompt(row), response)

    def prompt_for(self, row: dict) -> str:
        """The exact text the model sees before it answers, at training and at prediction."""
        self._require_loaded()
        return self.tokenizer.apply_chat_template(
            self.messages_for(row), tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        # The chat template writes every special token itself: the tokenizer must add none.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        """An answer's text from its new token ids (the end-of-turn token dropped)."""
        return tidy_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

    def training_examples(self, rows: Iterable[dict]) -> TrainingExamples:
        """Token ids and labels for training: prompt tokens are masked out of the loss, the
        response and its end-of-turn token are learned.

        Prompt and response are encoded apart so the prompt's tokens are exactly those that
        prediction feeds the model. A row longer than max_seq_length keeps its whole answer and
        loses the middle of its prompt, or is dropped (core.train.common.fit_example); both are logged
        by id.
        """
        self._require_loaded()
        examples = TrainingExamples()
        limit = self.profile.max_seq_length
        for row in rows:
            prompt_ids = self.encode(self.prompt_for(row))
            answer_ids = self.encode(row[TARGET].strip() + self.end_of_turn)
            examples.add(str(row.get(ID, len(examples.input_ids))), prompt_ids, answer_ids, limit)
        total = len(examples.input_ids) + len(examples.dropped)
        if examples.prompt_cut:
            log.warning("%d of %d rows are longer than max_seq_length=%d: trained on with the middle of the prompt cut, "
                        "the answer whole (%s)", len(examples.prompt_cut), total, limit, ", ".join(examples.prompt_cut))
        if examples.dropped:
            log.warning("%d of %d rows left out: the answer alone leaves less than a quarter of max_seq_length=%d to the "
                        "prompt (%s)", len(examples.dropped), total, limit, ", ".join(examples.dropped))
        return examples

    # --- loading ----------------------------------------------------------------------------
    @property
    def checkpoint(self) -> str:
        return resolve_checkpoint(self.profile)

    def _cache_key(self) -> tuple:
        p = self.profile
        return (self.backend.name, self.checkpoint, str(self.dtype), p.load_in_4bit, p.max_seq_length)

    def load(self) -> None:
        """Load the base model and tokenizer (once per process; see _BASE_CACHE)."""
        if self.model is not None:
            return
        key = self._cache_key()
        if key not in _BASE_CACHE:
            log.info("loading %s (%s backend, %s)", self.checkpoint, self.backend.name, self.dtype)
            model, tokenizer = self.backend.load(self.checkpoint, self.profile, self.dtype)
            _BASE_CACHE[key] = (model, self._set_up_tokenizer(tokenizer, model))
        self.model, self.tokenizer = _BASE_CACHE[key]

    def _set_up_tokenizer(self, tokenizer, model):
        vocab = tokenizer.get_vocab()
        for token in (self.end_of_turn, self.pad_token):
            if token not in vocab:
                raise CheckpointError(f"{self.checkpoint}: the tokenizer has no {token!r} token, which the {type(self).__name__} template needs")
        tokenizer.chat_template = self.chat_template
        # eos = end of turn: generation stops there, and whoever loads the saved adapter's tokenizer gets the same stop.
        tokenizer.eos_token = self.end_of_turn
        # pad must differ from eos, else masking padding could also mask the end-of-turn target.
        tokenizer.pad_token = self.pad_token
        tokenizer.padding_side = "left"  # generation; the training collator pads on the right itself
        tokenizer.clean_up_tokenization_spaces = False  # a BPE tokenizer's text must decode as it was
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None:
                config.pad_token_id = tokenizer.pad_token_id
                config.eos_token_id = tokenizer.eos_token_id
        return tokenizer

    def _require_loaded(self) -> None:
        if self.model is None:
            self.load()

    def _take_from_cache(self) -> None:
        """This instance is about to edit its model in place: no one else may get it from the cache."""
        for key, (model, _) in list(_BASE_CACHE.items()):
            if model is self.model:
                del _BASE_CACHE[key]

    def attach_lora(self, seed: int, gradient_checkpointing: bool = False) -> None:
        self._require_loaded()
        self._take_from_cache()
        self.model = self.backend.attach_lora(self.model, self.profile, seed, gradient_checkpointing)

    def parameter_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return trainable, total

    # --- training ---------------------------------------------------------------------------
    def fine_tune(
        self,
        train_rows: list[dict],
        val_rows: list[dict],
        training: TrainingConfig,
        output_dir: str | Path,
        callbacks: Iterable[Any] = (),
    ) -> dict:
        """LoRA fine-tuning with trl's SFTTrainer; resumes from the last checkpoint in
        `output_dir` if one is there. Returns the run's metrics."""
        from transformers import set_seed
        from trl import SFTConfig, SFTTrainer

        set_seed(training.seed)
        self._require_loaded()
        if not hasattr(self.model, "peft_config"):
            self.attach_lora(training.seed, training.gradient_checkpointing)
        train = self.training_examples(train_rows)
        if not train.input_ids:
            raise ConfigError(f"params.yaml: models.{self.profile.key}.max_seq_length: no training row fits in "
                              f"{self.profile.max_seq_length} tokens with its whole answer; raise it")
        val = self.training_examples(val_rows) if val_rows else None
        on_gpu = cuda_available()
        rows_per_pass, grad_accum = distributed.passes(training.batch_size, training.grad_accum,
                                                       training.rows_per_pass, on_gpu)
        processes = distributed.world_size()
        effective_batch = training.batch_size * training.grad_accum  # the same on any number of processes
        # Without padding a pass costs what its tokens cost (rows were fitted to max_seq_length
        # above), where the attention takes concatenated rows as they are: flash attention's
        # variable-length kernels. sdpa instead gets a dense block-diagonal mask over the whole
        # pass, and on the Qwen3-0.6B shape that cost more than the padding saved (docs/benchmarks.md)
        packs = "flash" in str(getattr(self.model.config, "_attn_implementation", ""))
        padding_free = on_gpu and packs if training.padding_free == "auto" else training.padding_free
        log.info("%d rows a pass x %d passes a step x %d processes = effective batch %d%s", rows_per_pass, grad_accum,
                 processes, effective_batch, ", padding-free" if padding_free else "")
        args = SFTConfig(
            **common_trainer_arguments(output_dir, seed=training.seed, evaluate=bool(val), dtype=self.dtype,
                                       max_length=None if padding_free else self.profile.max_seq_length,
                                       save_steps=training.save_steps, logging_steps=training.logging_steps),
            num_train_epochs=training.epochs,
            max_steps=training.max_steps,
            per_device_train_batch_size=rows_per_pass,
            # the trainer averages the batches' mean losses: a fixed eval batch keeps val_loss
            # comparable whatever rows_per_pass is
            per_device_eval_batch_size=training.batch_size,
            gradient_accumulation_steps=grad_accum,
            padding_free=padding_free,
            learning_rate=training.learning_rate,
            lr_scheduler_type=training.lr_scheduler,
            warmup_steps=training.warmup_ratio,  # a float below 1 is a fraction of all steps
            weight_decay=training.weight_decay,
            optim=training.optimizer,
            packing=False,
            ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient on every step
        )
        self.backend.for_training(self.model)
        self.tokenizer.padding_side = "right"
        trainer = SFTTrainer(
            model=self.model,
            args=args,
            train_dataset=train.as_dataset(),
            eval_dataset=val.as_dataset() if val else None,
            processing_class=self.tokenizer,
            callbacks=[divergence_guard(training.learning_rate), *callbacks],
        )
        resume, resumed_from_step = resume_point(output_dir)
        if resume:
            log.info("resuming from %s", resume)
        clock = run_clock(resume)
        trainer.add_callback(clock)
        keeper = best_epoch(self.model, output_dir, resumed_from_step) if val and training.keep_best_epoch else None
        if keeper:
            trainer.add_callback(keeper)
        result = trainer.train(resume_from_checkpoint=resume)
        seconds = clock.seconds  # the whole run, the part before a resume included
        self.tokenizer.padding_side = "left"
        self.training_log = trainer.state.log_history  # the resumed part's entries follow the checkpoint's
        train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        metrics = {
            "train_loss": train_losses[-1] if train_losses else result.training_loss,
            "train_loss_mean": result.training_loss,
            "train_runtime_s": seconds,
            "train_tokens_per_s": train.n_tokens * trainer.state.epoch / seconds if seconds > 0 else 0.0,
            "resumed_from_step": resumed_from_step,
            "epochs": trainer.state.epoch,
            "steps": trainer.state.global_step,
            "train_examples": len(train.input_ids),
            # rows longer than max_seq_length (core.train.common.fit_example), by split
            "prompts_cut": {"train": len(train.prompt_cut), "val": len(val.prompt_cut) if val else 0},
            "rows_dropped": {"train": len(train.dropped), "val": len(val.dropped) if val else 0},
            "backend": self.backend.name,
            "processes": processes,
            "effective_batch_size": effective_batch,
            "rows_per_pass": rows_per_pass,
            "padding_free": padding_free,
        }
        metrics["trainable_params"], metrics["total_params"] = self.parameter_counts()
        if val:
            # the epoch-end pass at the last step has scored the final weights already: not twice
            final = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
            metrics["val_loss"] = final[-1]["eval_loss"] if final else trainer.evaluate()["eval_loss"]
            metrics["val_loss_by_epoch"] = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
        if keeper and keeper.best:
            metrics["val_loss_last_epoch"] = metrics["val_loss"]
            if keeper.restore(trainer.state.global_step):
                log.info("kept the weights of epoch %g (val loss %.4f), not the last epoch's (%.4f)",
                         keeper.best["epoch"], keeper.best["val_loss"], metrics["val_loss"])
            # every evaluation went through the keeper, the final one too: its best is the run's
            metrics["val_loss"], metrics["best_epoch"] = keeper.best["val_loss"], keeper.best["epoch"]
        if on_gpu:
            metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    # --- generation -------------------------------------------------------------------------
    def generate_responses(self, rows: list[dict], generation: GenerationConfig) -> Generations:
        """Answer `rows` with the prompt training used, batched (core/decode/generation.py): greedy,
        sampled or beam search, with MBR selection among candidates if configured."""
        self._require_loaded()
        self.backend.for_inference(self.model)
        prefix_texts = [answer_prefix(row, generation.answer_prefix) for row in rows]
        # an answer's prefix is encoded apart from the prompt, as training encodes the answer; an
        # over-long vignette is cut to the window the model was tuned in, as in training, rather
        # than run past it (and for minutes on a CPU)
        encoded, prefix_ids = fit_to_window([self.encode(self.prompt_for(row)) for row in rows],
                                            [self.encode(text) if text else [] for text in prefix_texts],
                                            generation.longest_answer, self.profile.max_seq_length,
                                            [str(row.get(ID, i + 1)) for i, row in enumerate(rows)])
        prefixes = list(zip(prefix_texts, prefix_ids))
        stop_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        # The static-cache decoder needs transformers' own forward. Unsloth replaces it, and once imported
        # it patches the model classes for every model of the process (capture failed there on an H100)
        static_allowed = self.backend.name == "hf" and "unsloth" not in sys.modules
        return generate(self.model, self.tokenizer, encoded, stop_id, generation, self.dtype, self.decode, static_allowed,
                        prefixes)

    # --- adapters ---------------------------------------------------------------------------
    def save_adapter(self, path: str | Path) -> None:
        """Write the LoRA adapter, the tokenizer (with its chat template) and the resolved
        profile's training settings to `path`, replacing what was there in one step.

        Nothing here depends on the run itself (its time, its losses: those go to the metrics),
        so the same training inputs give a byte-identical directory and DVC sees no change."""
        with atomic.atomic_path(path) as tmp:
            self.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            # the settings the adapter was trained with; decoding is predict's business, and a
            # generation key in here would change the adapter's hash without changing the adapter
            atomic.write_json(tmp / "profile.json", {k: v for k, v in as_dict(self.profile).items() if k != "generation"})
            # peft keeps target_modules as a set and writes it in the process's string-hash order,
            # which changes from run to run: sorted, the same adapter is the same file.
            config = atomic.read_json(tmp / "adapter_config.json")
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
            atomic.write_json(tmp / "adapter_config.json", config)

    def load_adapter(self, path: str | Path, trainable: bool = False) -> None:
        """Load the base model and put the adapter saved at `path` on it (its weights trainable
        if `trainable`: the align stage tunes the SFT adapter further)."""
        path = Path(path)
        if not (path / "adapter_config.json").exists():
            raise ArtifactError(f"{path}: no LoRA adapter here (adapter_config.json is missing); run the finetune stage first")
        # a damaged file gets one line naming it, not a traceback from deep in safetensors
        atomic.check_safetensors(path / "adapter_model.safetensors", how_to_restore(path))
        saved = atomic.read_json(path / "profile.json") if (path / "profile.json").exists() else {}
        if saved and (saved.get("name"), saved.get("family")) != (self.profile.name, self.profile.family):
            raise ConfigError(
                f"{path}: this adapter was trained for {saved.get('name')} ({saved.get('family')} family), "
                f"not {self.profile.name} ({self.profile.family} family); rerun the finetune stage for this model"
            )
        self._require_loaded()
        self._take_from_cache()
        self.model = self.backend.load_adapter(self.model, path, trainable)

    # --- memory -----------------------------------------------------------------------------
    def cleanup_model(self) -> None:
        """Drop this instance's model and give its memory back (GPU memory too)."""
        self._take_from_cache()
        self.model = None
        self.tokenizer = None
        self.clear_cache(keep_models=True)

    @staticmethod
    def clear_cache(keep_models: bool = False) -> None:
        """Forget every cached base model (unless keep_models) and free unused memory."""
        if not keep_models:
            _BASE_CACHE.clear()
        gc.collect()
        if cuda_available():
            torch.cuda.empty_cache()
