"""Prompt embeddings taken from an earlier CLIP layer (`clip_skip`), computed here rather than by diffusers.

diffusers 0.42 reaches `text_encoder.text_model.final_layer_norm`, which transformers >= 5.6 flattened away, so
its own `clip_skip` path raises; this does the same maths on either layout.
"""

from __future__ import annotations

from typing import Any

import torch


def _final_layer_norm(text_encoder: Any) -> Any:
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def skipped_embeddings(pipeline: Any, text: str, skip: int) -> torch.Tensor:
    """The hidden state `skip` layers before the last, through the final layer norm (A1111's "CLIP skip")."""
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    if hasattr(pipeline, "maybe_convert_prompt"):
        # Multi-vector textual-inversion tokens expand to `tok tok_1 ...`, as diffusers' own encode_prompt does.
        text = pipeline.maybe_convert_prompt(text, tokenizer)
    ids = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    output = encoder(ids.to(encoder.device), output_hidden_states=True)
    hidden = output.hidden_states[-(skip + 1)]
    embeddings: torch.Tensor = _final_layer_norm(encoder)(hidden)
    return embeddings.to(dtype=encoder.dtype, device=encoder.device)


def clip_skip_kwargs(pipeline: Any, prompt: str, negative_prompt: str | None, skip: int) -> dict[str, Any]:
    """Pipeline arguments that replace `prompt`/`negative_prompt` with embeddings from the skipped layer."""
    with torch.inference_mode():
        positive = skipped_embeddings(pipeline, prompt, skip)
        # An absent negative prompt is the empty string, as in diffusers' own unconditional branch.
        negative = skipped_embeddings(pipeline, negative_prompt or "", skip)
    return {"prompt": None, "negative_prompt": None, "prompt_embeds": positive, "negative_prompt_embeds": negative}
