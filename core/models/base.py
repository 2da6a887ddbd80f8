"""BaseUnslothModel: one family's model and prompts, loaded, with LoRA adapters: the bottom layer
that training and answering stand on. It loads a causal LM (through a backend), renders prompts,
encodes answers, attaches, saves and loads adapters. It imports neither training nor answering:
`core.train.sft.fine_tune` / `core.train.dpo.align` (core/train/) and
`core.decode.answer.generate_responses` (core/decode/) take a loaded model, so an edit to one side never
reruns the stages of the other (the import contracts in pyproject.toml hold the layers).

The backends (Unsloth on CUDA, transformers + peft anywhere) live in core/models/backends.py.
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
from pathlib import Path
from typing import Any

import torch

from core import atomic
from core.config import ConfigError, ModelProfile, as_dict
from core.errors import ArtifactError, CheckpointError
from core.lock_record import how_to_restore
from core.models.backends import cuda_available, resolve_backend, resolve_dtype
from core.models.weights import resolve_checkpoint
from core.prompts import chat_messages, tidy_answer, user_message

log = logging.getLogger(__name__)

# Base models loaded in this process, keyed by what was loaded. peft edits a model in place
# when an adapter is attached, so a model leaves the cache at that moment.
_BASE_CACHE: dict[tuple, tuple[Any, Any]] = {}


def check_adapter(path: str | Path) -> None:
    """An ArtifactError naming `path` and its way back unless it holds a whole LoRA adapter: a stage that
    reads an adapter, or passes it on, checks it first (a damaged file is named, not copied on)."""
    path = Path(path)
    if not (path / "adapter_config.json").exists():
        raise ArtifactError(
            f"{path}: no LoRA adapter here (adapter_config.json is missing); run the finetune stage first"
        )
    # a damaged file gets one line naming it, not a traceback from deep in safetensors
    atomic.check_safetensors(path / "adapter_model.safetensors", how_to_restore(path))


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
        self.training_log: list[dict] = []  # the trainer's log history of the last fine_tune or align

    # --- prompts ------------------------------------------------------------------------
    def _create_input_prompt(self, row: dict) -> str:
        """The user message for a row (core/prompts.py); a family may override it."""
        return user_message(row)

    def messages_for(self, row: dict, response: str | None = None) -> list[dict]:
        return chat_messages(self.system_prompt, self._create_input_prompt(row), response)

    def prompt_for(self, row: dict) -> str:
        """The exact text the model sees before it answers, at training and at prediction."""
        self._require_loaded()
        return self.tokenizer.apply_chat_template(self.messages_for(row), tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        # The chat template writes every special token itself: the tokenizer must add none.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, text: str) -> list[int]:
        """An answer as the model learns to write it: its tokens, then the end-of-turn token."""
        return self.encode(text + self.end_of_turn)

    @property
    def stop_id(self) -> int:
        """The end-of-turn token's id: where an answer ends."""
        self._require_loaded()
        return self.tokenizer.convert_tokens_to_ids(self.end_of_turn)

    def decode(self, ids: list[int]) -> str:
        """An answer's text from its new token ids (the end-of-turn token dropped)."""
        return tidy_answer(self.tokenizer.decode(ids, skip_special_tokens=True))

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
                raise CheckpointError(
                    f"{self.checkpoint}: the tokenizer has no {token!r} token, "
                    f"which the {type(self).__name__} template needs"
                )
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
            settings = {k: v for k, v in as_dict(self.profile).items() if k not in ("generation", "base")}
            atomic.write_json(tmp / "profile.json", {**as_dict(self.profile.base), **settings})
            # peft keeps target_modules as a set and writes it in the process's string-hash order,
            # which changes from run to run: sorted, the same adapter is the same file.
            config = atomic.read_json(tmp / "adapter_config.json")
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
            atomic.write_json(tmp / "adapter_config.json", config)
            atomic.readable_by_all(tmp)  # safetensors writes its file 0600; every other file here is 0644

    def load_adapter(self, path: str | Path, trainable: bool = False) -> None:
        """Load the base model and put the adapter saved at `path` on it (its weights trainable
        if `trainable`: the align stage tunes the SFT adapter further)."""
        path = Path(path)
        check_adapter(path)
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
