"""Model families: each adds to BaseUnslothModel only its chat template and special tokens.

The templates are ours, not the checkpoints': the text a model is trained on and the text it
is prompted with at prediction come from the same template, whatever a checkpoint ships.
Each ends the assistant's turn with the family's end-of-turn token, which the model learns
to emit and generation stops on.
"""

from __future__ import annotations

from core.config import ConfigError, ModelProfile
from core.models.base import BaseUnslothModel

# ChatML, as SmolLM2 and Qwen use it. (No Jinja whitespace control: every newline is literal.)
_CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class SmolLM2Model(BaseUnslothModel):
    chat_template = _CHATML
    end_of_turn = "<|im_end|>"
    pad_token = "<|endoftext|>"


class Qwen3Model(BaseUnslothModel):
    # Thinking off, as Qwen3's own template does with enable_thinking=False: every assistant
    # turn opens with an empty think block, in training and at prediction alike, so the model
    # never learns to open one.
    chat_template = (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}"
        "{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
    )
    end_of_turn = "<|im_end|>"
    pad_token = "<|endoftext|>"


class Llama32Model(BaseUnslothModel):
    chat_template = (
        "<|begin_of_text|>"
        "{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    end_of_turn = "<|eot_id|>"
    pad_token = "<|finetune_right_pad_id|>"  # reserved in Llama 3.2's vocabulary for padding


FAMILIES: dict[str, type[BaseUnslothModel]] = {
    "smollm2": SmolLM2Model,
    "qwen3": Qwen3Model,
    "llama32": Llama32Model,
}


def model_for(profile: ModelProfile, system_prompt: str, job: str = "train") -> BaseUnslothModel:
    """The family class the profile names, ready to load for `job` (train | generate)."""
    try:
        family = FAMILIES[profile.family]
    except KeyError:
        raise ConfigError(
            f"params.yaml: models.{profile.key}.family: unknown family "
            f"{profile.family!r} (known: {', '.join(FAMILIES)})"
        ) from None
    return family(profile, system_prompt, job)
