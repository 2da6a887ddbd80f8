"""Attention for the static-cache decoder's one-token steps (core/decode/static_cache.py).

Two changes to transformers' sdpa attention, both only for a query of one token:

- Greedy decoding of a grouped-query model (`_grouped_attention`): the query heads that share a
  key/value head are folded onto it. transformers' sdpa path, given a padding mask, copies every key
  and value once per query head that shares it (repeat_kv), which at 200 rows was half of each
  step's time (docs/benchmarks.md).
- Beam search (`_beam_attention`): the prompt's keys and values are held once a prompt, not once a
  beam, in a cache of their own, and every beam of the prompt reads them there; each beam's own
  generated keys come from the model's cache; one softmax covers both.

The function is pure: what a beam step reads beyond the model's own arguments (the prompts' keys
and values, the beam count, how many generated columns to read) comes in the forward call's
keyword arguments, which transformers hands down to the attention function (`step_inputs`).
`decode_attention` gives one model this attention for the length of a `with` block and gives the
model back its own after; prompts (more than one query token) still go through sdpa.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

DECODE_ATTENTION = "kcr_decode_step"  # the name it is registered under in transformers' AttentionInterface


def step_inputs(prompt_keys: list, prompt_values: list, beams: int, generated: int) -> dict:
    """The keyword arguments of a beam step's forward call that reach `decode_step_attention`:
    the prompts' keys and values by layer [prompts, kv heads, width, head size], the beams a
    prompt, and the generated columns to read (at least those written)."""
    return {
        "decode_prompt_keys": prompt_keys,
        "decode_prompt_values": prompt_values,
        "decode_beams": beams,
        "decode_generated": generated,
    }


def decode_step_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention function the decoder registers: a beam step (`step_inputs` given) reads the
    shared prompts; anything else is sdpa's, with a one-token query folded onto its key/value heads."""
    prompt_keys = kwargs.pop("decode_prompt_keys", None)
    prompt_values = kwargs.pop("decode_prompt_values", None)
    beams, generated = kwargs.pop("decode_beams", 1), kwargs.pop("decode_generated", 0)
    if prompt_keys is not None and query.shape[2] == 1:
        layer = module.layer_idx
        read = BeamRead(prompt_keys[layer], prompt_values[layer], beams, generated, scaling)
        return _beam_attention(query, key, value, attention_mask, read)
    return _grouped_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, except for a one-token query of a grouped-query model: its
    query heads [batch, heads, 1, dim] are folded to [batch, kv_heads, heads per kv head, dim], so
    that each key/value head is read where it is, not copied once per query head. The query
    heads that share a key/value head are consecutive (as repeat_kv lays them out); the mask
    [batch, 1, 1, keys] is the same for all of them."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or heads == kv_heads or attention_mask is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    folded = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _float_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (batched, 3-d) in float32: half-precision inputs multiply at full speed and
    accumulate in float32 (as flash attention does), without a float32 copy of the cache."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


class BeamRead(NamedTuple):
    """What a beam step's attention reads besides the layer's own: the prompts' keys and values
    [prompts, kv heads, width, dim] (one copy a prompt, read by all its beams), the beams a prompt,
    the generated columns to read, and the scaling of the scores (None: 1/sqrt(dim))."""

    prompt_keys: torch.Tensor
    prompt_values: torch.Tensor
    beams: int
    generated: int
    scaling: float | None = None


def _beam_attention(query, key, value, attention_mask, read: BeamRead):
    """A one-token query of every beam [prompts x beams, heads, 1, dim] against its prompt (`read`,
    their query heads side by side) and its own first `read.generated` generated keys (`key`,
    `value`: [rows, kv heads, new tokens, dim]); one softmax over both. `attention_mask`
    [rows, 1, 1, prompt width + new tokens]: the prompt's real tokens, then the generated ones
    written so far."""
    prompt_keys, prompt_values, beams, generated, scaling = read
    rows, heads, _, dim = query.shape
    new, width = generated, prompt_keys.shape[2]
    key, value, kv_heads = key[:, :, :new], value[:, :, :new], key.shape[1]
    prompts, per_kv = rows // beams, heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # the prompt: [prompts x kv heads, beams x query heads a kv head, width]
    folded = (
        query.reshape(prompts, beams, kv_heads, per_kv, dim)
        .transpose(1, 2)
        .reshape(prompts * kv_heads, beams * per_kv, dim)
    )
    prompt_scores = _float_bmm(folded, prompt_keys.reshape(prompts * kv_heads, width, dim).transpose(1, 2)) * scale
    prompt_scores = prompt_scores.view(prompts, kv_heads, beams, per_kv, width)
    prompt_scores = prompt_scores.masked_fill(~attention_mask[::beams, :, None, :, :width], -float("inf"))
    # the generated tokens: [rows x kv heads, query heads a kv head, new]
    own = query.reshape(rows * kv_heads, per_kv, dim)
    generated_scores = _float_bmm(own, key.reshape(rows * kv_heads, new, dim).transpose(1, 2)) * scale
    generated_scores = generated_scores.view(rows, kv_heads, per_kv, new)
    generated_scores = generated_scores.masked_fill(~attention_mask[:, :, :, width : width + new], -float("inf"))
    generated_scores = generated_scores.view(prompts, beams, kv_heads, per_kv, new).transpose(1, 2)
    top = torch.maximum(prompt_scores.amax(-1), generated_scores.amax(-1))  # a prompt token is always there: finite
    prompt_weights = torch.exp(prompt_scores - top[..., None])
    generated_weights = torch.exp(generated_scores - top[..., None])
    total = prompt_weights.sum(-1) + generated_weights.sum(-1)  # [prompts, kv heads, beams, per kv]
    out = _float_bmm(
        prompt_weights.reshape(prompts * kv_heads, beams * per_kv, width).to(value.dtype),
        prompt_values.reshape(prompts * kv_heads, width, dim),
    ).view(prompts, kv_heads, beams, per_kv, dim)
    own_weights = generated_weights.transpose(1, 2).reshape(rows * kv_heads, per_kv, new).to(value.dtype)
    own_out = _float_bmm(own_weights, value.reshape(rows * kv_heads, new, dim)).view(
        prompts, beams, kv_heads, per_kv, dim
    )
    out = (out + own_out.transpose(1, 2)) / total[..., None]
    return out.transpose(1, 2).reshape(rows, 1, heads, dim).to(query.dtype), None


@contextmanager
def decode_attention(model, beams: bool):
    """`model` (a transformers PreTrainedModel) attends with `decode_step_attention` inside the
    block: always for beam search, and for greedy decoding where the model runs sdpa (another
    implementation, flash or eager, is kept as it is). Its own implementation is set back after,
    through transformers' public setter; the function itself holds no state, so registering it
    once for the process is safe."""
    before = model.config._attn_implementation
    if not beams and before != "sdpa":
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, decode_step_attention)
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
