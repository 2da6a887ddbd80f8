"""The two training/inference backends behind BaseUnslothModel, and the choice between them.

  * ``hf``: plain transformers + peft, which also runs on a CPU;
  * ``unsloth``: Unsloth's FastLanguageModel (CUDA only; 4-bit through bitsandbytes).
``backend: auto`` takes, on a GPU, what was measured faster for the job (resolve_backend: Unsloth
to train, transformers to answer); transformers elsewhere.

transformers and peft are imported inside functions, not at module level, on purpose: Unsloth
patches them when it is imported and must come first, so nothing may import them before the
backend has been chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core import distributed
from core.config import ModelProfile
from core.errors import UserError

log = logging.getLogger(__name__)


class BackendError(UserError, RuntimeError):
    """The configured backend cannot run on this machine."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


class HFBackend:
    """transformers + peft: runs anywhere torch runs."""

    name = "hf"

    def load(self, checkpoint: str, profile: ModelProfile, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": dtype}
        if profile.load_in_4bit:
            if cuda_available():
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype,
                )
            else:
                log.warning("load_in_4bit needs CUDA (bitsandbytes); loading %s unquantised on the CPU", checkpoint)
        if cuda_available():
            kwargs["device_map"] = {"": distributed.local_rank()}  # one GPU per process
        model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        return model, tokenizer

    def attach_lora(self, model, profile: ModelProfile, seed: int, gradient_checkpointing: bool):
        from peft import LoraConfig, get_peft_model

        # A 4-bit base is frozen and trained through as a bf16 base is, not through peft's
        # prepare_model_for_kbit_training: it casts every weight that is not quantized (embeddings,
        # norms, the output layer) to float32, and the residual stream, the attention and the KV
        # cache with them (docs/benchmarks.md). LoRA's own weights stay float32 (peft).
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(seed)  # LoRA's A matrices are drawn at random
        config = LoraConfig(
            r=profile.lora.r,
            lora_alpha=profile.lora.alpha,
            lora_dropout=profile.lora.dropout,
            target_modules=list(profile.lora.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def load_adapter(self, model, path: Path, trainable: bool = False):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
        compute = model.get_base_model().dtype
        quantized = getattr(model.get_base_model(), "is_loaded_in_4bit", False)
        if self.name == "hf" and not trainable and compute in (torch.bfloat16, torch.float16) and not quantized:
            # Answering in half precision: the adapter folded into the weights it adapts, so that a
            # decode step runs the base model's products alone, not the LoRA layers' small products
            # and casts besides (docs/benchmarks.md, section 5b). A 4-bit base cannot take it without
            # requantizing; in float32 (the CPU) the adapter stays apart, as training ran it.
            model.merge_adapter()
        return model

    def prepare_preference_training(self) -> None:
        """Whatever the backend needs before trl's DPOTrainer is built (nothing here)."""

    def for_inference(self, model) -> None:
        model.eval()

    def for_training(self, model) -> None:
        model.train()


class UnslothBackend(HFBackend):
    """Unsloth's FastLanguageModel: fused kernels and its own gradient checkpointing, CUDA only."""

    name = "unsloth"

    def __init__(self) -> None:
        import unsloth  # noqa: F401  (first, so that it can patch transformers, peft and trl)
        from unsloth import FastLanguageModel

        self.fast = FastLanguageModel

    def load(self, checkpoint: str, profile: ModelProfile, dtype: torch.dtype):
        model, tokenizer = self.fast.from_pretrained(
            model_name=checkpoint,
            max_seq_length=profile.max_seq_length,
            dtype=dtype,
            load_in_4bit=profile.load_in_4bit,
            device_map={"": distributed.local_rank()},  # one GPU per process
        )
        return model, tokenizer

    def attach_lora(self, model, profile: ModelProfile, seed: int, gradient_checkpointing: bool):
        return self.fast.get_peft_model(
            model,
            r=profile.lora.r,
            lora_alpha=profile.lora.alpha,
            lora_dropout=profile.lora.dropout,
            target_modules=list(profile.lora.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
            random_state=seed,
            max_seq_length=profile.max_seq_length,
        )

    def prepare_preference_training(self) -> None:
        from unsloth import PatchDPOTrainer

        PatchDPOTrainer()  # Unsloth's fast paths inside trl's DPOTrainer

    def for_inference(self, model) -> None:
        self.fast.for_inference(model)

    def for_training(self, model) -> None:
        self.fast.for_training(model)


def resolve_backend(choice: str, job: str = "train") -> HFBackend:
    """The backend object for `choice` (auto | unsloth | hf) and `job` (train | generate), or a
    one-sentence BackendError.

    `auto` on a GPU takes what benchmarks/backends.py measured faster (docs/benchmarks.md,
    sections 4 and 5): to answer, transformers+peft, whose greedy and beam decoding run as CUDA
    graphs (core/decode/static_cache.py), several times faster than Unsloth's own inference path;
    to train, Unsloth (a higher steady rate in less memory; its first steps compile, so hf finishes
    short runs first). The answering job never imports Unsloth, which patches transformers' model
    classes."""
    if choice == "auto" and job == "generate" and cuda_available():
        log.info("backend auto: transformers+peft to answer on this GPU (measured faster: core/models/backends.py)")
        return HFBackend()
    if choice == "hf":
        return HFBackend()
    if choice == "unsloth" and not cuda_available():
        raise BackendError(
            "backend 'unsloth' needs an NVIDIA GPU with CUDA and none is visible on this machine; "
            "set backend: hf (or auto) in the model's profile in params.yaml to train with transformers+peft here."
        )
    if choice in ("unsloth", "auto") and cuda_available():
        try:
            return UnslothBackend()
        except ImportError as err:
            if choice == "unsloth":
                raise BackendError(
                    f"backend 'unsloth' was chosen but unsloth cannot be imported ({err}); "
                    "install it with: pip install -r requirements-gpu.txt"
                ) from None
            log.warning("unsloth is not importable (%s); using transformers+peft on the GPU", err)
    return HFBackend()


def resolve_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if cuda_available():
        # bfloat16 where the card has it natively (compute capability 8.0, Ampere, and up); float16 on a
        # T4 (7.5). Not torch.cuda.is_bf16_supported(): it says yes where bfloat16 is only emulated (a T4),
        # and Unsloth, once imported, replaces it with a function of its own (docs/benchmarks.md, section 8)
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    return torch.float32
